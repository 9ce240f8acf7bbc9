"""Who may use a running ``nenya serve``: a token per start, as Jupyter's, and Host and Origin checks.

127.0.0.1 is not private on a shared login node (every user of the machine reaches it), and a web
page in the user's own browser can reach it through DNS rebinding. So every route (the page, the
Bokeh websocket, thumbnails, downloads, uploads) needs the token: in the URL (``?token=``, the first
visit then sets an HttpOnly, SameSite=Strict cookie), in the cookie, or as ``Authorization: token
<token>`` for scripts. A request whose ``Host`` is not a name this server answers to, or that comes
from a page of another origin, is refused whatever it carries. Tokens are compared in constant time
and never logged.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import secrets
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from tornado.httputil import split_host_and_port
from tornado.web import Finish, HTTPError, RequestHandler
from tornado.websocket import WebSocketHandler

log = logging.getLogger(__name__)

__all__ = ["Access", "new_token", "host_names", "is_loopback"]

ENV = "NENYA_SERVE_TOKEN"
HOW = "open the URL that `nenya serve` printed (it ends in ?token=...), or send 'Authorization: token <token>'"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    """A random token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def host_names(host: str, origins: tuple[str, ...] = ()) -> frozenset[str]:
    """The names (lower case, no port) a server bound to ``host`` answers to: the bound address,
    the loopback names when bound to loopback or every address, this machine's names when bound to
    every address, and the ``--allow-origin`` names."""
    names = {host.lower().strip("[]")}
    if is_loopback(host) or host in ("0.0.0.0", "::", ""):
        names |= {"127.0.0.1", "localhost", "::1"}
    if host in ("0.0.0.0", "::", ""):
        names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
    for o in origins:
        name, _ = split_host_and_port(o.lower())
        names.add(name.strip("[]"))
    return frozenset(n for n in names if n)


@dataclass(frozen=True)
class Access:
    """The rules of one server: ``token`` (None: no token, loopback only), the ``hosts`` it answers to
    and its ``port`` (the cookie is named per port: two servers on one machine keep their own)."""

    token: str | None
    hosts: frozenset[str]
    port: int

    @property
    def cookie(self) -> str:
        return f"nenya-token-{self.port}"

    def check(self, handler: RequestHandler) -> None:
        """Raise HTTP 403 unless ``handler``'s request may be answered; a token that came in the URL
        is kept in a cookie, so that the page's own requests carry it."""
        request = handler.request
        name, _ = split_host_and_port((request.host or "").lower())
        if name.strip("[]") not in self.hosts:
            _refuse(handler, "this server does not answer to that host name (start it with --allow-origin NAME)")
        origin = request.headers.get("Origin")
        if origin is not None and (urlsplit(origin).hostname or "").lower() not in self.hosts:
            _refuse(handler, "requests from pages of another origin are refused")
        if self.token is None:
            return
        given = handler.get_query_argument("token", None)
        if given is not None and self._same(given):
            handler.set_cookie(self.cookie, self.token, httponly=True, samesite="Strict", path="/")
            return
        auth = request.headers.get("Authorization", "")
        if auth.lower().startswith("token ") and self._same(auth[6:].strip()):
            return
        cookie = handler.get_cookie(self.cookie)
        if cookie is not None and self._same(cookie):
            return
        _refuse(handler, "this server needs its token: " + HOW)

    def _same(self, given: str) -> bool:
        assert self.token is not None
        return hmac.compare_digest(given.encode("utf-8", "replace"), self.token.encode())


PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>nenya serve: 403</title></head>
<body style="font:15px sans-serif;margin:3em"><h2>nenya serve: not without its token</h2><p>{message}</p>
<p>The URL is printed where the server was started: <code>serving N points at
http://127.0.0.1:PORT/?token=...</code>. On a cluster node, forward the port over SSH and open that
URL on your machine (see the docs: "nenya serve on a cluster").</p></body></html>"""


def _refuse(handler: RequestHandler, message: str) -> None:
    """Answer 403 with ``message`` (JSON on our routes, a page that says what to do on the page)."""
    import html
    import json

    if isinstance(handler, WebSocketHandler):  # before the upgrade: a plain 403
        raise HTTPError(403)
    handler.set_status(403)
    handler.set_header("Cache-Control", "no-store")
    if handler.request.path.startswith("/nenya/"):
        handler.set_header("Content-Type", "application/json")
        handler.finish(json.dumps({"error": message}))
    else:
        handler.set_header("Content-Type", "text/html; charset=utf-8")
        handler.finish(PAGE.format(message=html.escape(message)))
    raise Finish()


def bokeh_auth(access: Access):
    """A Bokeh auth provider applying ``access`` to Bokeh's own routes (the page, its websocket)."""
    from bokeh.server.auth_provider import AuthProvider

    class _TokenAuth(AuthProvider):
        # the async hook: Bokeh awaits it in prepare(), before the page is built or the websocket
        # upgraded (the plain get_user runs only in the websocket's open(), after the 101)
        @property
        def get_user_async(self):
            async def user(handler: RequestHandler) -> str:
                access.check(handler)
                return "nenya"

            return user

        @property
        def login_url(self) -> str:  # never used: check() answers 403 instead of redirecting
            return "/nenya/no-token"

    return _TokenAuth()

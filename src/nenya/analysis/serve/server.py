"""``nenya serve``: a Bokeh server (Tornado) on 127.0.0.1 by default, one document per browser
session, plus three small HTTP routes of our own:

- ``GET nenya/thumb/<row>.png``: a row's thumbnail (``row`` a number the server listed, nothing else);
- ``GET nenya/download/<token>``: a file the server wrote into its temporary folder (exports, large replies);
- ``POST nenya/query?name=<file name>``: an uploaded query (``.npy`` cutout or an image for photo
  models), size-limited and decoded from memory by the extraction's hardened readers.

No request parameter is ever joined to a filesystem path: rows index the collection, tokens index a
table the server filled, file names only tell ``.npy`` from an image.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import threading
from importlib import resources

from tornado import web

from nenya.analysis.explorer.layout import json_in_html, nenya_js, script_data
from nenya.analysis.query import IMAGE_SUFFIXES
from nenya.analysis.serve.access import Access, bokeh_auth, host_names, is_loopback
from nenya.analysis.serve.state import ServeState
from nenya.analysis.serve.work import Busy

log = logging.getLogger(__name__)

__all__ = ["make_server", "run_server", "CSP", "is_loopback"]

CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-inline' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self' ws: wss:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
ROW = re.compile(r"^([0-9]{1,12})\.png$")
TOKEN = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
UPLOAD_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_. -]{0,127}$")
TEMPLATE = """{% extends base %}
{% block preamble %}<meta http-equiv="Content-Security-Policy" content="{{ nenya_csp }}">
<style>#nenya-upload-bar{font:13px sans-serif;padding:6px 8px;border-bottom:1px solid #ddd}
#nenya-upload-msg{margin-left:8px;color:#555}</style>{% endblock %}
{% block contents %}<div id="nenya-upload-bar">query by image: <input type="file" id="nenya-upload"
 accept=".npy,image/*"{{ " disabled" if not nenya_query }}><span id="nenya-upload-msg">{{ nenya_query_note }}</span></div>
{{ super() }}{% endblock %}
{% block inner_body %}{{ super() }}
<script type="application/json" id="nenya-data">{{ nenya_data }}</script>
<script>{{ nenya_script }}</script>{% endblock %}
"""


def free_port(host: str) -> int:
    """A port nobody listens on now (for ``--port 0``)."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class _Base(web.RequestHandler):
    """Our routes' common headers, access check and JSON errors; ``state`` and ``access`` come from
    the route's arguments."""

    state: ServeState
    access: Access

    def initialize(self, state: ServeState, access: Access) -> None:
        self.state, self.access = state, access

    def prepare(self) -> None:
        self.access.check(self)

    def write_error(self, status_code: int, **kwargs: object) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": self._reason}))

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("Cache-Control", "no-store")

    def fail(self, status: int, message: str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": message}))


class _Thumb(_Base):
    """``GET nenya/thumb/<row>.png``: a row's thumbnail; nothing but a row number is accepted."""

    async def get(self, name: str) -> None:
        m = ROW.match(name)
        if not m:
            return self.fail(400, "a thumbnail is asked for as <row>.png, row a number the page listed")
        row = int(m.group(1))
        if row >= self.state.collection.n:
            return self.fail(404, f"no row {row}")
        # read in a thread: a page asks for dozens at once, and the server keeps answering meanwhile
        try:
            png = await asyncio.get_running_loop().run_in_executor(
                self.state.reads, self.state.collection.thumbnail, row
            )
        except Busy as e:
            return self.fail(503, str(e))
        if png is None:
            return self.fail(404, f"row {row} has no image")
        self.set_header("Content-Type", "image/png")
        self.set_header("Cache-Control", "private, max-age=3600")
        self.finish(png)


class _Download(_Base):
    """``GET nenya/download/<token>``: a file the server wrote and listed under that token."""

    def get(self, token: str) -> None:
        d = self.state.download(token) if TOKEN.match(token) else None
        if d is None:
            return self.fail(404, "no such download (they last while the server runs)")
        self.set_header("Content-Type", d.content_type)
        self.set_header("Content-Disposition", f'attachment; filename="{d.filename}"')
        with open(d.path, "rb") as f:
            while chunk := f.read(1 << 20):
                self.write(chunk)
        self.finish()


@web.stream_request_body
class _Query(_Base):
    """``POST nenya/query?name=<file name>``: an uploaded query, refused as soon as it is too large."""

    def prepare(self) -> None:
        self.access.check(self)  # before a byte of the body is read
        self.chunks: list[bytes] = []
        self.size = 0
        self.refused = ""
        if self.request.method != "POST":
            return
        name = self.get_query_argument("name", "")
        if not UPLOAD_NAME.match(name) or ".." in name:
            self.refused = "give the upload's file name as ?name=<file>.npy (or an image file name), no folders"
        elif not name.lower().endswith((".npy", *IMAGE_SUFFIXES)):
            self.refused = f"{name}: a query is a .npy cutout or an image file ({', '.join(IMAGE_SUFFIXES)})"
        length = self.request.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > self.state.options.max_upload:
            self.fail(413, self._too_big(int(length)))

    def _too_big(self, n: int) -> str:
        return (
            f"the upload is {n:,} bytes; this server takes at most {self.state.options.max_upload:,} (--max-upload-mb)"
        )

    def data_received(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.state.options.max_upload:
            if not self._finished:
                self.fail(413, self._too_big(self.size))
            return
        self.chunks.append(chunk)

    async def post(self) -> None:
        if self._finished:
            return
        if self.refused:
            return self.fail(400, self.refused)
        name = self.get_query_argument("name")
        data = b"".join(self.chunks)
        try:
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(self.state.work, self.state.run_query, data, name)
        except Busy as e:
            return self.fail(503, str(e))
        except Exception as e:  # any bad upload gets its reason; the server keeps serving
            if not isinstance(e, (ValueError, RuntimeError)):
                log.exception("query %s failed", name)
            return self.fail(409 if isinstance(e, RuntimeError) else 400, str(e))
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(result.summary(self.state.collection), allow_nan=False))


def _routes(state: ServeState, access: Access) -> list:
    args = {"state": state, "access": access}
    return [
        (r"/nenya/thumb/(.*)", _Thumb, args),
        (r"/nenya/download/(.*)", _Download, args),
        (r"/nenya/query", _Query, args),
    ]


def _page_data(state: ServeState) -> dict:
    from nenya.analysis.dtbins import DT_bins
    from nenya.analysis.explorer.data import dt_column, first_colour

    c = state.collection
    return {
        **script_data(
            c.columns,
            first_colour(c.columns, state.options.colour),
            dt_column(c.columns),
            DT_bins,
            stats=c.binned.spec,
            source=state.options.source,
        ),  # fmt: skip
        "n": c.n,
        "title": state.options.title,
        "note": [f"{c.n:,} points"],
        "among": "in this collection",
        "views": c.views,
        "thumbs": c.images is not None and c.images.kind is not None,
        "query": state.encoder is not None,
        "max_upload": state.options.max_upload,
        "k": state.options.k,
    }


def make_server(
    state: ServeState,
    *,
    host: str = "127.0.0.1",
    port: int = 5006,
    origins: tuple[str, ...] = (),
    token: str | None = None,
):
    """A started-but-not-running Bokeh :class:`~bokeh.server.server.Server` for ``state``.

    Every route needs ``token`` (None: none, loopback only; see :mod:`.access`) and a ``Host`` this
    server answers to: ``host`` (and 127.0.0.1/localhost when bound to loopback or to every
    address) and the extra ``origins`` (``name[:port]``), from which pages may also open the
    websocket. The :class:`~.access.Access` rules are ``server.nenya_access``."""
    if token is None and not is_loopback(host):
        raise ValueError(f"a server on {host} without a token would let anyone reach the collection: drop --no-token")
    from bokeh.application import Application
    from bokeh.application.handlers.function import FunctionHandler
    from bokeh.server.server import Server
    from jinja2 import Template

    from nenya.analysis.serve.app import Session

    script = nenya_js(resources.files("nenya.analysis.serve").joinpath("serve_host.js").read_text(encoding="utf-8"))
    template = Template(TEMPLATE)
    variables = {
        "nenya_csp": CSP,
        "nenya_data": json_in_html(_page_data(state)),
        "nenya_script": script,
        "nenya_query": state.encoder is not None,
        "nenya_query_note": "" if state.encoder is not None else state.no_query_reason,
    }

    def make_document(doc) -> None:
        doc.template = template
        doc.template_variables.update(variables)
        session = Session(state, doc)  # kept alive by the callbacks its widgets registered
        # a browser session ended: drop its arrays now rather than whenever its document is collected
        doc.on_session_destroyed(lambda context: session.close())

    if port == 0:
        port = free_port(host)
    access = Access(token, host_names(host, origins), port)
    # pages may open the websocket from the names the Host check accepts: one rule for both (Bokeh's
    # allowlist cannot spell an IPv6 address; the access check still covers it)
    allowed = [*origins, *(f"{h}:{port}" for h in sorted(access.hosts) if ":" not in h)]
    server = Server(
        {"/": Application(FunctionHandler(make_document))},
        auth_provider=bokeh_auth(access),
        exclude_cookies=[access.cookie],  # Bokeh copies cookies and headers into the page's session token
        exclude_headers=["Authorization", "Cookie"],
        address=host,
        port=port,
        allow_websocket_origin=allowed,
        extra_patterns=_routes(state, access),
        websocket_max_message_size=64 * 1024 * 1024,
        # a closed tab's session (its selection and filter arrays: megabytes at millions of points)
        # is dropped 15-25 s after its websocket closes
        unused_session_lifetime_milliseconds=15_000,
        check_unused_sessions_milliseconds=10_000,
        num_procs=1,
    )
    server.start()
    server.nenya_access = access
    return server


def run_server(
    state: ServeState,
    *,
    host: str = "127.0.0.1",
    port: int = 5006,
    origins: tuple[str, ...] = (),
    ready=None,
    grace: float = 5.0,
    token: str | None = "auto",
) -> bool:
    """Serve until Ctrl-C (or SIGTERM); then stop cleanly and remove the temporary folder.

    ``ready(url)`` is called once the server listens with the URL to open, which carries ``token``
    (default: the URL is printed). ``token="auto"`` makes a random one; None means none (loopback only). The first Ctrl-C or
    SIGTERM stops the event loop, cancels waiting work and gives running work ``grace`` seconds; a
    second one exits at once (status 130), the temporary folder removed. Returns True when every
    worker finished in time, False when some were left behind (daemon threads: the caller may exit).
    """
    if not is_loopback(host):
        log.warning(
            "serving on %s: anyone who can reach this machine can browse the collection and upload queries; "
            "bind 127.0.0.1 (the default) unless you mean it",
            host,
        )
    if token == "auto":
        from nenya.analysis.serve.access import new_token

        token = new_token()
    server = make_server(state, host=host, port=port, origins=origins, token=token)
    shown = host if host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    shown = f"[{shown}]" if ":" in shown else shown
    base = f"http://{shown}:{server.port}/"
    url = base + (f"?token={token}" if token else "")
    threading.Thread(target=state.warm_up, name="nenya-query-model", daemon=True).start()
    signals = _StopSignals(server.io_loop.asyncio_loop, state)
    try:
        signals.install()
        (ready or _print_url)(url)
        server.io_loop.start()
    except KeyboardInterrupt:  # a Ctrl-C that reached Python before our handlers were installed
        pass
    finally:
        signals.shutting_down()
        try:
            server.stop()
            clean = state.shutdown(grace)
        finally:
            signals.restore()
    log.info("stopped serving %s", base)  # never the token
    return clean


def _print_url(url: str) -> None:
    print(f"serving at {url} (Ctrl-C stops)", flush=True)  # the token is the user's: shown, never logged


class _StopSignals:
    """SIGINT and SIGTERM stop the event loop; during the shutdown that follows, a second one exits.

    While the loop runs, the handlers go through its wakeup file (``loop.add_signal_handler``), so
    a signal wakes the loop whichever thread the kernel hands it to. Python's default SIGINT handler
    instead raises KeyboardInterrupt wherever the main thread happens to be, inside any callback or
    library call, and only once that thread next runs Python code. Off the main thread (embedded in
    tests or a notebook) nothing is installed and the caller stops the loop."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, loop: asyncio.AbstractEventLoop, state: ServeState) -> None:
        self.loop, self.state = loop, state
        self.active = threading.current_thread() is threading.main_thread()
        self.previous: dict = {}
        self.stopping = False

    def install(self) -> None:
        if not self.active:
            return
        self.previous = {s: signal.getsignal(s) for s in self.SIGNALS}
        for s in self.SIGNALS:
            self.loop.add_signal_handler(s, self._first, s)

    def _first(self, sig: signal.Signals) -> None:
        if self.stopping:
            return self._force(sig)
        self.stopping = True
        log.info("%s: stopping (once more to exit at once)", signal.Signals(sig).name)
        self.loop.stop()

    def _force(self, sig: int, frame: object = None) -> None:
        log.warning("%s again: exiting now", signal.Signals(sig).name)
        self.state.close()
        os._exit(130)

    def shutting_down(self) -> None:
        """The loop has stopped: a plain handler (run by the main thread between its waits) forces."""
        if not self.active:
            return
        self.stopping = True
        for s in self.SIGNALS:
            self.loop.remove_signal_handler(s)
            signal.signal(s, self._force)

    def restore(self) -> None:
        for s, h in self.previous.items():
            signal.signal(s, h)

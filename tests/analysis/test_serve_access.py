"""``nenya serve`` is safe to leave running: every route needs the token, a foreign Host or Origin is
refused, the token is never logged, and the worker pools bound the work and never keep a stopped
server alive."""

from __future__ import annotations

import http.client
import os
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pagekit import CHROMIUM  # noqa: E402
from servekit import make_collection, start_server, stop_server  # noqa: E402

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
TOKEN = "t0ken-for-the-access-tests-0123456789"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    d = make_collection(tmp_path_factory.mktemp("access"), 3000, n_real=100)
    # the token from the environment, as a user keeps it out of the process list
    s = start_server([d.latents, "--coords", d.coords, "--images", d.preproc], Path(d.latents).parent,
                     env={"NENYA_SERVE_TOKEN": TOKEN})  # fmt: skip
    yield s, d
    rc, _, log = stop_server(s)
    assert rc == 0, log
    assert TOKEN not in log.replace(s.page, "")  # printed once in the URL, never logged


def _raw(url: str, path: str, headers: dict[str, str], method: str = "GET", body: bytes | None = None):
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.putrequest(method, path, skip_host="Host" in headers, skip_accept_encoding=True)
    for k, v in headers.items():
        conn.putheader(k, v)
    if body is not None:
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body)
    r = conn.getresponse()
    return r.status, r.read(), r.getheader("Set-Cookie") or ""


WS = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
      "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}  # fmt: skip
ROUTES = [("GET", "/", {}), ("GET", "/ws", WS), ("GET", "/nenya/thumb/3.png", {}),
          ("GET", "/nenya/download/AAAAAAAAAAAAAAAAAAAAAAAA", {}), ("POST", "/nenya/query?name=q.npy", {})]  # fmt: skip


def test_every_route_needs_the_token(served):
    s, d = served
    upload = (Path(d.latents).parent / "s_preproc.h5").read_bytes()[:4096]
    wrong = "x" * len(TOKEN)  # the right length, the wrong token
    for method, path, extra in ROUTES:
        body = upload if method == "POST" else None
        for auth in (
            {},
            {"Authorization": f"token {wrong}"},
            {"Cookie": f"nenya-token-{urlparse(s.url).port}={wrong}"},
        ):
            status, text, _ = _raw(s.url, path, {**extra, **auth}, method, body)
            assert status == 403, (path, auth, status)
            assert b"valid/" not in text and b"DT40" not in text  # nothing of the collection
        q = "&" if "?" in path else "?"
        status, _, _ = _raw(s.url, f"{path}{q}token={wrong}", extra, method, body)
        assert status == 403, (path, "wrong token in the URL")
    # the token: in the URL (a cookie is set), as a header, or in the cookie alone
    status, page, cookie = _raw(s.url, f"/?token={TOKEN}", {})
    assert status == 200 and b"nenya-data" in page
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in page.decode()
    name_value = cookie.split(";")[0]
    assert _raw(s.url, "/nenya/thumb/3.png", {"Cookie": name_value})[0] == 200
    assert _raw(s.url, "/nenya/thumb/3.png", {"Authorization": f"token {TOKEN}"})[0] == 200
    assert _raw(s.url, "/", {"Cookie": name_value})[0] == 200
    # the websocket upgrade is answered (101) once the token is there
    assert _raw(s.url, "/ws", {**WS, "Cookie": name_value, "Origin": s.url.rstrip("/")})[0] == 101


def test_foreign_host_and_origin_are_refused(served):
    s, _ = served
    port = urlparse(s.url).port
    good = {"Authorization": f"token {TOKEN}"}
    assert _raw(s.url, "/nenya/thumb/3.png", {**good, "Host": f"localhost:{port}"})[0] == 200
    # DNS rebinding: the attacker's name resolves to 127.0.0.1, the Host header still says its name
    for path in ("/", "/nenya/thumb/3.png"):
        assert _raw(s.url, path, {**good, "Host": f"evil.example:{port}"})[0] == 403
    status, _, _ = _raw(s.url, "/nenya/query?name=q.npy", {**good, "Origin": "http://evil.example"}, "POST", b"x")
    assert status == 403
    status, _, _ = _raw(s.url, "/ws", {**WS, **good, "Origin": "http://evil.example"})
    assert status == 403


def test_no_token_is_refused_off_loopback_and_a_bad_token_is_named(tmp_path, capsys):
    from nenya import cli

    assert cli.main(["serve", "x.parquet", "--no-token", "--host", "0.0.0.0"]) == 2
    assert "--no-token is refused" in capsys.readouterr().err
    assert cli.main(["serve", "x.parquet", "--token", "short"]) == 2
    assert "a token is 16 to 256" in capsys.readouterr().err


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} not installed")
def test_the_page_with_the_token_then_with_the_cookie_alone(served):
    from playwright.sync_api import sync_playwright

    s, d = served
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        ctx = browser.new_context()
        page = ctx.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(s.page)
        page.wait_for_function("window.nenya && window.nenya.ready", timeout=60_000)
        assert "token" not in page.url  # it left the address bar
        cookies = ctx.cookies()
        assert [c["httpOnly"] for c in cookies if c["name"].startswith("nenya-token")] == [True]
        assert page.evaluate("document.cookie") == ""  # no script reads it
        # a reload without the token: the cookie alone opens the page, and the API works
        page.goto(s.url)
        page.wait_for_function("window.nenya && window.nenya.ready", timeout=60_000)
        n = page.evaluate("nenya.selectBox('projection', -100, 100, -100, 100)")
        assert n == d.table.shape[0]
        url = page.evaluate("nenya.exportUrl()")
        assert page.evaluate(f"fetch({url!r}).then(r => r.status)") == 200
        assert page.evaluate(f"fetch({url!r}, {{credentials: 'omit'}}).then(r => r.status)") == 403
        # another browser (no cookie, no token) gets the 403 page that says what to do
        other = browser.new_context().new_page()
        r = other.goto(s.url)
        assert r is not None and r.status == 403 and "nenya serve" in other.content()
        browser.close()
    assert errors == []
    # the export is the selection, downloaded with the token from outside the browser
    status, csv = s.get(url)
    assert status == 200 and csv.decode().count("\n") == d.table.shape[0] + 1


# -- the worker pools --------------------------------------------------------------------------------
def test_work_pool_bounds_work_and_never_waits_past_its_deadline():
    from nenya.analysis.serve.work import Busy, WorkPool

    pool = WorkPool(2, backlog=1)
    release = threading.Event()
    running = [pool.submit(release.wait), pool.submit(release.wait)]
    waiting = pool.submit(lambda: 7)
    with pytest.raises(Busy, match="busy"):
        pool.submit(lambda: 8)
    release.set()
    assert all(f.result(5) for f in running) and waiting.result(5) == 7
    assert pool.submit(np.sum, [1, 2]).result(5) == 3
    stuck, started = threading.Event(), threading.Event()
    pool.submit(lambda: started.set() or stuck.wait())
    assert started.wait(5)
    queued = [pool.submit(lambda: 1)]
    t = time.monotonic()
    assert pool.close(timeout=0.5) is False  # a task still running is left behind, in time
    assert time.monotonic() - t < 2 and all(f.cancelled() or f.done() for f in queued)
    with pytest.raises(RuntimeError, match="stopping"):
        pool.submit(lambda: 1)
    stuck.set()


# -- many users ------------------------------------------------------------------------------------
def _polygons(x: np.ndarray, y: np.ndarray, k: int) -> list[list[list[float]]]:
    """``k`` different triangles, each around a point of the collection (so that none is empty)."""
    out = []
    for i in range(k):
        row = (i * 7919) % len(x)
        r, a = 0.6 + 0.05 * i, 0.5 * i
        out.append([[x[row] + r * np.cos(a + t), y[row] + r * np.sin(a + t)] for t in (0.0, 2.1, 4.2)])
    return out


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} not installed")
def test_twelve_sessions_at_once_keep_their_own_selections(tmp_path):
    """12 browser contexts on one server over 100,000 points, all at once: each lassoes its own region
    and filters its own pattern, gets exactly the ids numpy finds, while one exports everything and
    the others fetch thumbnails; no session sees another's selection or filter."""
    import asyncio

    from playwright.async_api import async_playwright

    from pagekit import inside

    d = make_collection(tmp_path / "many", 100_000, n_real=200)
    t = d.table
    x, y = t["U0"].to_numpy(), t["U1"].to_numpy()
    polys = _polygons(x, y, 12)
    # each session filters the pattern most common under its own lasso (so that both bite)
    pattern = t["pattern"].astype(str).to_numpy()
    levels = [pd.Series(pattern[inside(x, y, q)]).mode().iloc[0] for q in polys]
    s = start_server([d.latents, "--coords", d.coords, "--images", d.preproc], Path(d.latents).parent)

    async def one(browser, i: int) -> dict:
        ctx = await browser.new_context()
        page = await ctx.new_page()
        await page.goto(s.page)
        await page.wait_for_function("window.nenya && window.nenya.ready", timeout=240_000)
        out: dict = {"shown": await page.evaluate("([v]) => nenya.setFilter('pattern', [v])", [levels[i]])}
        out["n"] = await page.evaluate("([p]) => nenya.select('projection', p)", [polys[i]])
        if i == 0:  # one session exports all it shows while the others read thumbnails
            await page.evaluate("nenya.selectBox('projection', -100, 100, -100, 100)")
            out["csv_rows"] = (await page.evaluate("nenya.exportCsv()")).count("\n") - 1
            out["n"] = await page.evaluate("([p]) => nenya.select('projection', p)", [polys[i]])
        else:
            rows = list(range(i * 100, i * 100 + 24))
            js = "async (rows) => Promise.all(rows.map(r => fetch('nenya/thumb/' + r + '.png').then(x => x.status)))"
            out["thumbs"] = await page.evaluate(js, rows)
        out["ids"] = await page.evaluate("nenya.selectedIds()")
        out["state"] = await page.evaluate("nenya.state()")
        await ctx.close()
        return out

    async def main() -> list[dict]:
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                return await asyncio.gather(*(one(browser, i) for i in range(12)))
            finally:
                await browser.close()

    try:
        results = asyncio.run(main())
    finally:
        rc, _, log = stop_server(s)
    assert rc == 0, log
    for i, r in enumerate(results):
        level = levels[i]
        keep = (t["pattern"].astype(str) == level).to_numpy()
        want = t["id"].to_numpy()[keep & inside(x, y, polys[i])]
        assert r["shown"] == keep.sum() and r["n"] == len(want) > 0, (i, r["n"], len(want))
        assert sorted(r["ids"]) == sorted(want.tolist()), i
        assert r["state"]["selected"] == len(want) and r["state"]["shown"] == keep.sum()
        if i == 0:
            assert r["csv_rows"] == keep.sum()
        else:
            assert r["thumbs"] == [200] * 24

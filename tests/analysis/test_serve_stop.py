"""``nenya serve`` stops within seconds in every state: right after start (the query model still
loading), after queries, exports and thumbnails, and with all of those still in flight; by Ctrl-C
(SIGINT) or SIGTERM, 20 times over, exit status 0 and its temporary folder removed."""

from __future__ import annotations

import io
import os
import signal
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pagekit import CHROMIUM  # noqa: E402
from servekit import make_collection, start_server, stop_server  # noqa: E402

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
STATES = ["loading", "after-work", "in-flight", "after-work", "in-flight"]


def _burst(s, cutout: bytes, n: int = 40) -> list[threading.Thread]:
    """Thumbnails and uploads requested at once, from threads (some may be cut off by the stop)."""

    def one(i: int) -> None:
        try:
            if i % 8 == 0:
                s.get(f"nenya/query?name=q{i}.npy", data=cutout, method="POST")
            else:
                s.get(f"nenya/thumb/{i * 37}.png")
        except OSError:
            pass  # the server went away mid-request: expected in flight

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    return threads


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} not installed")
def test_twenty_stops_in_every_state(tmp_path):
    from playwright.sync_api import sync_playwright

    d = make_collection(tmp_path / "c", 100_000, n_real=200)
    import h5py

    with h5py.File(d.preproc) as f:
        buf = io.BytesIO()
        np.save(buf, f["valid"][5])
    cutout = buf.getvalue()
    times: list[float] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        for i in range(20):
            state = STATES[i % len(STATES)]
            sig = signal.SIGTERM if i % 4 == 3 else signal.SIGINT
            tmp = tmp_path / f"tmp{i}"
            tmp.mkdir()
            s = start_server(
                [d.latents, "--coords", d.coords, "--images", d.preproc],
                Path(d.latents).parent,
                env={"TMPDIR": str(tmp)},
            )
            page = None
            if state != "loading":
                page = browser.new_page()
                page.goto(s.page)
                page.wait_for_function("window.nenya && window.nenya.ready", timeout=120_000)
                page.evaluate("nenya.selectBox('projection', -100, 100, -100, 100)")  # every point
            if state == "after-work":
                page.evaluate("nenya.exportCsv()")
                for t in _burst(s, cutout):
                    t.join(60)
            elif state == "in-flight":
                page.evaluate("() => { nenya.exportCsv(); return 1; }")  # 100,000 rows, not awaited
                _burst(s, cutout)
            rc, seconds, log = stop_server(s, timeout=30, sig=sig)
            if page is not None:
                page.close()
            assert rc == 0 and seconds < 10, (i, state, sig, rc, seconds, log[-4000:])
            assert "stopped" in log, log[-4000:]
            assert list(tmp.iterdir()) == [], (i, state, "the temporary folder was left behind")
            times.append(seconds)
        browser.close()
    print(f"stops: median {np.median(times):.2f} s, max {max(times):.2f} s")

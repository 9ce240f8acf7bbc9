"""Many users on one `nenya serve`: sessions x minutes of mixed work, response times per kind,
errors and the server's memory before, during and after.

A demo-like collection (``tests/servekit.py``) of ``--points`` points is served by a fresh
``python -m nenya serve``; ``--users`` headless Chromium contexts (separate cookies and sessions)
open it at once and, for ``--minutes``, each repeats a random mix of: a lasso (a triangle around a
random point), a filter (a pattern, then cleared), a burst of 8 thumbnails, ``neighbours(id)``, an
export of the current selection, and the upload of a 32x32 cutout, with a short pause between calls.
Each call is timed in the page around the awaited ``window.nenya`` call or ``fetch``; a call that
throws, or a thumbnail that is not 200, is an error. The server's RSS is read from /proc at start
(after the page loads), every second during the run (peak), and 60 s after every context closed
(a closed tab's session is dropped 15-25 s after its websocket closes); the baseline is the server at
rest after a warm-up user made each kind of call once and left (one-time costs paid). Then SIGINT, which must end
it with exit status 0.

    python bench/serve_users.py                                  # 20 users x 5 min at 1,000,000 points
    python bench/serve_users.py --users 4 --minutes 0.5 --points 100000 --no-save

Prints a table and appends it, dated and with the machine, to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from _report import HERE, add_save_args, load_average, markdown_table, report  # noqa: E402

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
KINDS = ["lasso", "filter", "thumbs", "neighbours", "export", "upload"]
WEIGHTS = [4, 2, 4, 3, 1, 1]
TIMED = """async ([kind, a]) => {
  const nenya = window.nenya, t0 = performance.now();
  const late = new Promise((_, no) => setTimeout(() => no(new Error(`no answer in 120 s`)), 120000));
  return Promise.race([late, (async () => {
  let n = 0;
  if (kind === "lasso") n = await nenya.select("projection", a.poly);
  else if (kind === "filter") { n = await nenya.setFilter("pattern", [a.level]); await nenya.clearFilters(); }
  else if (kind === "thumbs") {
    const st = await Promise.all(a.rows.map((r) => fetch(`nenya/thumb/${r}.png`).then((x) => x.status)));
    const bad = st.filter((s) => s !== 200);
    if (bad.length) throw new Error(`thumbnails answered ${bad.join(",")}`);
    n = st.length;
  }
  else if (kind === "neighbours") n = (await nenya.neighbours(a.id)).length;
  else if (kind === "export") n = (await nenya.exportCsv()).length;
  else if (kind === "upload") {
    const bin = atob(a.b64), u = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) u[i] = bin.charCodeAt(i);
    n = (await nenya.query(new Blob([u]), "cutout.npy")).neighbours.length;
  }
  return { ms: performance.now() - t0, n };
  })()]);
}"""


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS"))


class _Sampler(threading.Thread):
    """The server's RSS every second; ``peak`` is the largest seen."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            try:
                self.peak = max(self.peak, _rss_mb(self.pid))
            except OSError:
                return


async def _user(browser, page_url: str, seconds: float, i: int, pick, times: dict, errors: list) -> None:
    ctx = await browser.new_context()
    page = await ctx.new_page()
    await page.goto(page_url)
    await page.wait_for_function("window.nenya && window.nenya.ready", timeout=900_000)
    rng = random.Random(i)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        kind = rng.choices(KINDS, WEIGHTS)[0]
        try:
            r = await page.evaluate(TIMED, [kind, pick(rng, kind)])
            times.setdefault(kind, []).append(r["ms"])
        except Exception as e:  # counted, and the session goes on
            errors.append(f"user {i} {kind}: {str(e).splitlines()[0][:200]}")
        await asyncio.sleep(rng.uniform(0.2, 1.0))
    await ctx.close()


async def _warm_up(args, served, pick, errors: list) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=args.chromium, args=ARGS)
        try:
            ctx = await browser.new_context()
            page = await ctx.new_page()
            await page.goto(served.page)
            await page.wait_for_function("window.nenya && window.nenya.ready", timeout=900_000)
            rng = random.Random(-1)
            for kind in KINDS:
                try:
                    await page.evaluate(TIMED, [kind, pick(rng, kind)])
                except Exception as e:
                    errors.append(f"warm-up {kind}: {str(e).splitlines()[0][:200]}")
            await ctx.close()
        finally:
            await browser.close()


def _wait_for(cond, seconds: float) -> None:
    end = time.monotonic() + seconds
    while not cond() and time.monotonic() < end:
        time.sleep(0.2)


def _run(args) -> dict:
    from servekit import make_collection, start_server, stop_server

    folder = Path(tempfile.mkdtemp(prefix="nenya-bench-users-", dir=args.tmpdir))
    try:
        t = time.perf_counter()
        data = make_collection(folder, args.points)
        print(f"{args.points:,} points written in {time.perf_counter() - t:.0f} s", flush=True)
        tab = data.table
        x, y = tab["U0"].to_numpy(), tab["U1"].to_numpy()
        ids = tab["id"].astype(str).to_numpy()
        levels = sorted(tab["pattern"].astype(str).unique())
        import h5py

        with h5py.File(data.preproc) as f:
            buf = io.BytesIO()
            np.save(buf, np.asarray(f["valid"][17], dtype=np.float32))
        b64 = base64.b64encode(buf.getvalue()).decode()
        n = args.points

        def pick(rng: random.Random, kind: str) -> dict:
            row = rng.randrange(n)
            r = rng.uniform(0.3, 1.5)
            poly = [[float(x[row] + r * np.cos(a)), float(y[row] + r * np.sin(a))] for a in (0.0, 2.1, 4.2)]
            return {"poly": poly, "level": rng.choice(levels), "rows": [rng.randrange(n) for _ in range(8)],
                    "id": str(ids[row]), "b64": b64}  # fmt: skip

        del tab
        data.table = None
        served = start_server([data.latents, "--coords", data.coords, "--images", data.preproc], folder, timeout=900)
        sampler = _Sampler(served.proc.pid)
        times: dict[str, list[float]] = {}
        errors: list[str] = []
        try:
            t = time.perf_counter()  # the resting state: the query model loaded in its thread at start
            while not any("query model loaded" in line for line in served.lines) and time.perf_counter() - t < 300:
                time.sleep(0.2)
            cold_mb = _rss_mb(served.proc.pid)
            # a warm-up user does each kind of call once and leaves: one-time costs (the query model's
            # first forward, index and CSV-writer buffers) are then in the baseline, and what stays
            # after the many users is what their sessions left behind
            asyncio.run(_warm_up(args, served, pick, errors))
            _wait_for(lambda: sum("a browser session ended" in line for line in served.lines) >= 1, 60)
            time.sleep(5)
            start_mb = _rss_mb(served.proc.pid)
            sampler.start()

            async def main() -> None:
                from playwright.async_api import async_playwright

                async with async_playwright() as p:
                    browser = await p.chromium.launch(executable_path=args.chromium, args=ARGS)
                    try:
                        await asyncio.gather(*(_user(browser, served.page, args.minutes * 60, i, pick, times, errors)
                                               for i in range(args.users)))  # fmt: skip
                    finally:
                        await browser.close()

            t = time.perf_counter()
            asyncio.run(main())
            wall = time.perf_counter() - t
            closed_mb = _rss_mb(served.proc.pid)
            time.sleep(60)
            after_mb = _rss_mb(served.proc.pid)
            ended = sum("a browser session ended" in line for line in served.lines)
        finally:
            sampler.stop.set()
            rc, stop_s, _ = stop_server(served)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"times": times, "errors": errors, "start_mb": start_mb, "peak_mb": max(sampler.peak, closed_mb),
            "closed_mb": closed_mb, "after_mb": after_mb, "rc": rc, "stop_s": stop_s, "wall_s": wall,
            "startup_s": served.startup, "ended": ended - 1, "cold_mb": cold_mb}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=20, help="browser contexts at once")
    ap.add_argument("--minutes", type=float, default=5.0, help="how long each works")
    ap.add_argument("--points", type=int, default=1_000_000, help="collection size")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    ap.add_argument("--tmpdir", default=None, help="where the collection is written (default: system temp)")
    add_save_args(ap, HERE / "RESULTS.md")
    args = ap.parse_args()
    r = _run(args)
    rows = []
    for kind in KINDS:
        v = np.asarray(r["times"].get(kind, []), dtype=float)
        nerr = sum(e.split(": ")[0].endswith(kind) for e in r["errors"])
        if len(v):
            rows.append([kind, f"{len(v):,}", f"{np.percentile(v, 50):.0f}", f"{np.percentile(v, 95):.0f}",
                         f"{v.max():.0f}", str(nerr)])  # fmt: skip
        else:
            rows.append([kind, "0", "-", "-", "-", str(nerr)])
    back = (r["after_mb"] - r["start_mb"]) / r["start_mb"]
    lines = [
        f"{args.users} browser contexts (headless Chromium, one server) x {args.minutes:g} min of mixed work at "
        f"{args.points:,} points (demo-like collection, 16-d vectors; `bench/serve_users.py`): lasso, filter + "
        "clear, 8 thumbnails at once, neighbours(id), export of the selection, upload of a 32x32 cutout, in a "
        "random mix with 0.2-1 s pauses; times in the page around each awaited call. "
        f"Load average {load_average()}.",
        "",
    ]
    lines += markdown_table(["call", "count", "p50 ms", "p95 ms", "max ms", "errors"], rows)
    lines += [
        "",
        f"Server RSS: {r['cold_mb']:.0f} MB after startup ({r['startup_s']:.1f} s, query model loaded), "
        f"{r['start_mb']:.0f} MB at rest after a warm-up user made each call once and left (the baseline), peak "
        f"{r['peak_mb']:.0f} MB, {r['closed_mb']:.0f} MB as the last context closed, {r['after_mb']:.0f} MB "
        f"60 s later ({back:+.1%} from the start; {r['ended']} of {args.users} sessions ended by then). Errors: {len(r['errors'])}"
        + (f" (first: {r['errors'][0]})" if r["errors"] else "")
        + f". Exit status {r['rc']} {r['stop_s']:.1f} s after SIGINT; the run took {r['wall_s']:.0f} s.",
    ]
    report(args, f"serve_users.py ({args.users} users x {args.minutes:g} min, {args.points:,} points)", lines)


if __name__ == "__main__":
    main()

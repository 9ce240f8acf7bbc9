"""Memory and response times of `nenya serve` at several numbers of points.

For each size a demo-like collection is written (``tests/servekit.py``: 400 real SST-like cutouts
extracted with a SupCon checkpoint, the rest jittered copies; 16-d vectors, projection and map
views) and served by a FRESH ``python -m nenya serve`` subprocess. Measured: the startup (launch to
the ``serving ... at URL`` line), the server's RSS after startup and its peak (``VmHWM`` read from
/proc just before stopping), the page's load in headless Chromium (``goto`` to ``window.nenya.ready``)
and, in the page (``performance.now()`` around each awaited ``window.nenya`` call, so websocket
round trips included), the median of ``--repeats`` calls of: a lasso over about half the projection,
a box over half the map, ``setFilter`` on ``pattern`` and on ``DT40`` then ``clearFilters``,
``selectedIds()``, ``exportCsv()`` of the lasso, a pan of the projection (``x_range`` moved by a tenth
and the ``RangesUpdate`` event the pan tool sends at the end of a drag, until the server has replaced
the drawn points), a thumbnail GET (a different row each time, so the
server's cache is cold), ``neighbours(id)`` and an uploaded 32x32 cutout query (which must find
itself). Then the server gets SIGINT and must exit 0.

    python bench/serve.py                       # 200000,1000000 points
    python bench/serve.py --sizes 200000 --no-save

Needs playwright (Python) and a Chromium binary. Prints a table and appends it, dated and with the
machine, to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from _report import HERE, add_save_args, load_average, markdown_table, report  # noqa: E402

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
# about half of each view: the projection's points lie around (0, 0) (four pattern blobs at radius 4),
# the map's are uniform over lon -180..180, lat -60..60
LASSO = [[-9.0, -9.0], [0.5, -9.0], [0.0, -3.0], [0.6, 0.0], [0.0, 3.0], [0.5, 9.0], [-9.0, 9.0], [-10.0, 0.0]]
BOX = [[-180.0, -90.0], [0.0, -90.0], [0.0, 90.0], [-180.0, 90.0]]
CUTOUT = 17  # the uploaded query is valid/17 of the preproc file

CALLS = """async ([lasso, box, reps]) => {
  const nenya = window.nenya, out = {}, info = {};
  const time = async (key, f) => {
    const t0 = performance.now(), v = await f();
    (out[key] = out[key] || []).push(performance.now() - t0);
    return v;
  };
  for (let i = 0; i < reps; i++) {
    info.lasso = await time("lasso", () => nenya.select("projection", lasso));
    info.ids = (await time("ids", () => nenya.selectedIds())).length;
    const csv = await time("export", () => nenya.exportCsv());
    info.rows = csv.split("\\n").filter((l) => l.length).length - 1;
    info.box = await time("box", () => nenya.select("map", box));
    info.pattern = await time("pattern", () => nenya.setFilter("pattern", ["front", "eddy"]));
    info.dt = await time("dt", () => nenya.setFilter("DT40", [1.5, 4]));
    info.clear = await time("clear", () => nenya.clearFilters());
  }
  return { out, info };
}"""

ONE_BY_ONE = """async ([b64, ids, reps]) => {
  const nenya = window.nenya, out = { pan: [], thumb: [], nbrs: [], query: [] }, info = {};
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const doc = Bokeh.documents[0];
  const fig = doc.get_model_by_name("projection"), src = doc.get_model_by_name("nenya-points:projection");
  const view = Bokeh.index.find_one(fig);
  for (let i = 0; i < reps; i++) {
    const before = src.data.row, w = fig.x_range.end - fig.x_range.start, d = (i % 2 ? -w : w) / 10;
    const t0 = performance.now();
    fig.x_range.setv({ start: fig.x_range.start + d, end: fig.x_range.end + d });
    view.trigger_ranges_update_event(); // what the pan tool does when a drag ends (setv alone tells no one)
    while (src.data.row === before) {
      if (performance.now() - t0 > 120000) throw new Error("pan: no new points after 120 s");
      await sleep(2);
    }
    out.pan.push(performance.now() - t0);
  }
  info.drawn = src.data.row.length;
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    const r = await fetch(`nenya/thumb/${123 + 1000 * i}.png`, { cache: "no-store" });
    if (!r.ok) throw new Error(`thumbnail: ${r.status}`);
    info.thumb_bytes = (await r.blob()).size;
    out.thumb.push(performance.now() - t0);
  }
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    info.nbrs = (await nenya.neighbours(ids[i % ids.length])).length;
    out.nbrs.push(performance.now() - t0);
  }
  const bin = atob(b64), a = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) a[i] = bin.charCodeAt(i);
  const blob = new Blob([a]);
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    const res = await nenya.query(blob, "cutout.npy");
    out.query.push(performance.now() - t0);
    info.query_first = res.neighbours[0].id;
    info.query_score = res.neighbours[0].score;
  }
  return { out, info };
}"""


def _memory_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS) of a process, in MB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(line.split()[1]) / 1024
    return out


def _browse(url: str, chromium: str, cutout_b64: str, ids: list[str], reps: int) -> dict:
    """Open the page (its load time), then time the API's calls in it."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1250, "height": 1100})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            t = time.perf_counter()
            page.goto(url)
            page.wait_for_function("window.nenya && window.nenya.ready", timeout=600_000)
            load_s = time.perf_counter() - t
            state = page.evaluate("nenya.state()")
            a = page.evaluate(CALLS, [LASSO, BOX, reps])
            b = page.evaluate(ONE_BY_ONE, [cutout_b64, ids, reps])
        finally:
            browser.close()
    return {
        "load_s": load_s,
        "state": state,
        "ms": {**a["out"], **b["out"]},
        **a["info"],
        **b["info"],
        "errors": errors,
    }


def _cutout(preproc: str) -> str:
    import h5py

    with h5py.File(preproc) as f:
        cut = np.asarray(f["valid"][CUTOUT], dtype=np.float32)
    buf = io.BytesIO()
    np.save(buf, cut)
    return base64.b64encode(buf.getvalue()).decode()


def _one(n: int, args) -> dict:
    """Write ``n`` points, serve them in a fresh process, measure, stop."""
    from pagekit import inside
    from servekit import make_collection, start_server, stop_server

    folder = Path(tempfile.mkdtemp(prefix="nenya-bench-serve-", dir=args.tmpdir))
    try:
        t = time.perf_counter()
        data = make_collection(folder, n)
        print(f"{n:,} points written in {time.perf_counter() - t:.0f} s", flush=True)
        tab = data.table
        want = {
            "lasso": int(inside(tab["U0"].to_numpy(), tab["U1"].to_numpy(), LASSO).sum()),
            "box": int(inside(tab["lon"].to_numpy(float), tab["lat"].to_numpy(float), BOX).sum()),
        }
        ids = [str(tab["id"].iloc[(1000 * i + 7) % n]) for i in range(args.repeats)]
        del tab
        data.table = None  # the server holds its own copy; this process keeps none
        served = start_server([data.latents, "--coords", data.coords, "--images", data.preproc], folder, timeout=900)
        try:
            after = _memory_mb(served.proc.pid)["VmRSS"]
            m = _browse(served.page, args.chromium, _cutout(data.preproc), ids, args.repeats)
            mem = _memory_mb(served.proc.pid)
        finally:
            rc, stop_s, log = stop_server(served)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    r = {"n": n, "startup_s": served.startup, "rss_mb": after, "peak_mb": mem["VmHWM"], "end_mb": mem["VmRSS"]}
    r.update(m, want=want, rc=rc, stop_s=stop_s, log=log)
    print({k: v for k, v in r.items() if k != "log"}, flush=True)
    return r


def _med(r: dict, key: str) -> str:
    return f"{statistics.median(r['ms'][key]):.0f}"


def _row(r: dict) -> list[str]:
    return [
        f"{r['n']:,}",
        f"{r['startup_s']:.1f}",
        f"{r['rss_mb']:.0f} / {r['peak_mb']:.0f}",
        f"{r['load_s']:.1f}",
        f"{_med(r, 'lasso')} ({r['lasso']:,})",
        f"{_med(r, 'box')} ({r['box']:,})",
        f"{_med(r, 'pattern')} / {_med(r, 'dt')} / {_med(r, 'clear')}",
        f"{_med(r, 'ids')} ({r['ids']:,})",
        f"{_med(r, 'export')} ({r['rows']:,})",
        _med(r, "pan"),
        _med(r, "thumb"),
        _med(r, "nbrs"),
        f"{_med(r, 'query')} ({'self' if r['query_first'] == f'valid/{CUTOUT}' else r['query_first']})",
    ]


def _problems(r: dict) -> list[str]:
    """What went wrong in one size's run (empty: nothing)."""
    out = []
    if r["rc"] != 0:
        out.append(f"exit status {r['rc']} after SIGINT")
    if r["lasso"] != r["want"]["lasso"] or r["box"] != r["want"]["box"]:
        out.append(f"selections {r['lasso']:,}/{r['box']:,}, numpy says {r['want']['lasso']:,}/{r['want']['box']:,}")
    if r["ids"] != r["lasso"] or r["rows"] != r["lasso"]:
        out.append(f"{r['ids']:,} ids and {r['rows']:,} CSV rows for {r['lasso']:,} selected")
    if r["query_first"] != f"valid/{CUTOUT}":
        out.append(f"the uploaded valid/{CUTOUT} found {r['query_first']} first")
    slow = {k: max(v) for k, v in r["ms"].items() if max(v) > 5000}
    if slow:
        out.append("calls over 5 s: " + ", ".join(f"{k} {v / 1000:.1f} s" for k, v in slow.items()))
    if r["errors"]:
        out.append(f"page errors: {r['errors'][:3]}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="200000,1000000", help="points, comma-separated")
    ap.add_argument("--repeats", type=int, default=5, help="calls of each kind (the table gives the median)")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    ap.add_argument("--tmpdir", default=None, help="where the collections are written (default: system temp)")
    add_save_args(ap, HERE / "RESULTS.md")
    args = ap.parse_args()
    results = [_one(int(v), args) for v in args.sizes.split(",")]
    lines = [
        "Demo-like collections (`tests/servekit.py`: 400 real 32x32 cutouts extracted with a SupCon checkpoint, "
        "the rest jittered copies; 16-d vectors, the exact index built at start), each served by a fresh "
        "`nenya serve` process and browsed by headless Chromium 1250x1100 without a GPU. Startup: launch to the "
        "`serving ... at URL` line; RSS: the server's after startup and its peak (VmHWM) at the end; page load: "
        "`goto` to `window.nenya.ready`. Response times are medians of "
        f"{args.repeats} calls timed in the page around the awaited `window.nenya` call (websocket round trip "
        "included): a lasso over about half the projection and a box over half the map (points selected), "
        "`setFilter` on `pattern` / on `DT40` / `clearFilters`, `selectedIds()` and `exportCsv()` of the lasso "
        "(ids, CSV rows), a pan of the projection by a tenth (`x_range.setv` and the `RangesUpdate` event the pan "
        "tool sends when a drag ends) until the server has replaced its drawn points, a "
        "thumbnail GET (a different row each time: the server's cache is cold), `neighbours(id)` (k=10, over all "
        "points) and the upload of a 32x32 float32 `.npy` cutout (`self`: its nearest neighbour is its own "
        f"stored vector). Load average {load_average()}.",
        "",
    ]
    header = ["points", "startup s", "server RSS MB (after start / peak)", "page load s", "lasso ms (selected)",
              "box ms (selected)", "filter ms (pattern / DT40 / clear)", "ids ms (n)", "export ms (rows)", "pan ms",
              "thumb ms", "neighbours ms", "query ms"]  # fmt: skip
    lines += markdown_table(header, [_row(r) for r in results])
    notes = []
    for r in results:
        slowest = max(((k, max(v)) for k, v in r["ms"].items()), key=lambda kv: kv[1])
        state = f"exit {r['rc']} {r['stop_s']:.1f} s after SIGINT" + "".join(f"; **{p}**" for p in _problems(r))
        notes.append(
            f"{r['n']:,} points: {r['state']['drawn']['projection']:,} drawn in the projection; slowest single call "
            f"{slowest[0]} {slowest[1]:.0f} ms; {state}."
        )
    lines += ["", " ".join(notes)]
    report(args, f"serve.py (sizes {args.sizes})", lines)


if __name__ == "__main__":
    main()

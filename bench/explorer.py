"""The explorer page in headless Chromium: file size, write and load times, and how long a polygon
selection, a filter, a change of colour and a redraw take, at several numbers of points.

    python bench/explorer.py [--n 10000,100000,250000,1000000] [--thumbs 1000] [--k 10] [--repeat 3]
                             [--page OLD.html ...]

Needs playwright (Python) and a Chromium binary. Beyond the page's ``max_points`` (250,000) the page
shows a random sample, so the 1,000,000 row measures writing a sample of a larger set. Times inside
the page are measured there (``performance.now()`` around the call, then two animation frames so the
views have redrawn), the median of ``--repeat`` (a change of colour to a number and back to a
category, a filter on a number and on a category, each cleared, a pan); the tests check the page's
behaviour, this script how fast it is. ``--page`` measures pages already written by this script (for
example by an older version of nenya, kept) in the same run, interleaved with the new ones, so that
a before/after comparison shares the machine's load. "painter": who drew the points on the canvas
(``nenya``: the page's own square drawing, ``bokeh``: Bokeh's, as pages before 2026-12 did).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from _report import HERE, add_save_args, load_average, markdown_table, report
from nenya.analysis import write_explorer
from nenya.analysis.images import ImageLookup
from nenya.sample_data import write_preproc

ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _page(folder: Path, n: int, *, n_images: int, thumbs: int, k: int) -> tuple[str, float]:
    """Write a page of ``n`` clustered points (four classes, SST cutouts as thumbnails, lat/lon for the map);
    return it and the write time."""
    rng = np.random.default_rng(0)
    pre = write_preproc(folder / "e_preproc.h5", n_valid=n_images, size=16, seed=3)
    cls = rng.integers(0, 4, n)
    centres = np.array([[0, 0], [8, 1], [3, 7], [-5, 5]], dtype=np.float32)
    xy = centres[cls] + rng.normal(size=(n, 2)).astype(np.float32)
    vectors = (np.eye(4, 16)[cls] * 3 + rng.normal(size=(n, 16))).astype(np.float32)
    table = pd.DataFrame(
        {
            "id": [f"valid/{i}" for i in range(n)],
            "partition": "valid",
            "row": np.arange(n) % n_images,
            "label": np.array(["a", "b", "c", "d"])[cls],
            "DT40": rng.gamma(2, 1, n),
            "lat": rng.uniform(-60, 60, n),
            "lon": rng.uniform(-180, 180, n),
        }
    )
    t = time.perf_counter()
    path = write_explorer(
        str(folder / f"page{n}.html"),
        xy[:, 0],
        xy[:, 1],
        table,
        vectors=vectors if k > 0 else None,
        images=ImageLookup(table, images=pre),
        color="label",
        k=k,
        max_thumbs=thumbs,
    )
    return path, time.perf_counter() - t


TIMED = """async (repeat) => {
  const frames = () => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
  const time = async (f) => { const t = performance.now(); await f(); await frames(); return performance.now() - t; };
  const median = (a) => a.slice().sort((x, y) => x - y)[Math.floor(a.length / 2)];
  const fig = Bokeh.documents[0].get_model_by_name("projection");
  const out = {}, runs = {colour: [], colour_cat: [], filter: [], clear: [], filter_cat: [], pan: [], export: []};
  out.select_ms = await time(() => window.nenya.select("projection", [[-2, -2], [3, -1.5], [4, 3], [0.5, 5], [-3, 2]]));
  out.selected = (await window.nenya.selectedIds()).length;
  for (let r = 0; r < repeat; r++) {
    runs.filter.push(await time(() => window.nenya.setFilter("DT40", [1, 2.5])));
    runs.export.push(await time(() => window.nenya.exportCsv()));
    runs.clear.push(await time(() => window.nenya.clearFilters()));
    runs.filter_cat.push(await time(() => window.nenya.setFilter("label", ["a", "c"])));
    runs.clear.push(await time(() => window.nenya.clearFilters()));
    const w = (r % 2 ? -1 : 1) * (fig.x_range.end - fig.x_range.start) / 10;
    runs.pan.push(await time(() => fig.x_range.setv({start: fig.x_range.start + w, end: fig.x_range.end + w})));
    runs.colour.push(await time(() => window.nenya.setColour("DT40")));
    runs.colour_cat.push(await time(() => window.nenya.setColour("label")));
  }
  for (const [k, v] of Object.entries(runs)) out[k + "_ms"] = median(v);
  out.painter = (window.nenyaBackend && window.nenyaBackend.painted) ? "nenya" : "bokeh";
  return out;
}"""


def _measure(path: str, chromium: str, repeat: int) -> dict:
    """Open the page; its load time and the in-page times of a selection, filters, an export, a pan and
    changes of colour (medians of ``repeat``)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1250, "height": 1000})
            t = time.perf_counter()
            page.goto("file://" + path)
            page.wait_for_function("window.nenya && window.nenya.ready", timeout=600_000)
            load_s = time.perf_counter() - t
            m = page.evaluate(TIMED, repeat)
            m["shown"] = page.evaluate("window.nenya.shownIds().then((s) => s.length)")
        finally:
            browser.close()
    return {"load_s": load_s, **m}


def screenshot(out: str, chromium: str) -> None:
    """The picture in docs/: 3,000 points, a polygon selected in the projection, a filter, a clicked point."""
    from playwright.sync_api import sync_playwright

    folder = Path(tempfile.mkdtemp(prefix="nenya-shot-"))
    try:
        path, _ = _page(folder, 3000, n_images=300, thumbs=1000, k=8)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=ARGS)
            page = browser.new_page(viewport={"width": 1250, "height": 1000})
            page.goto("file://" + path)
            page.wait_for_function("window.nenya && window.nenya.ready", timeout=120_000)
            page.evaluate("window.nenya.select('projection', [[-2.5, -2], [3, -1.5], [4, 3], [0.5, 5], [-3, 2]])")
            page.evaluate("window.nenya.setFilter('DT40', [1, 3])")
            page.evaluate("window.nenya.neighbours('valid/10')")
            page.wait_for_timeout(500)
            page.screenshot(path=out, clip={"x": 0, "y": 0, "width": 1250, "height": 1300}, full_page=True)
            browser.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", default="10000,100000,250000,1000000", help="points, comma-separated")
    ap.add_argument("--images", type=int, default=1000, help="cutouts in the preproc file the thumbnails come from")
    ap.add_argument("--thumbs", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10, help="neighbours per point (0: none)")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    ap.add_argument("--tmpdir", default=None, help="where the pages are written (default: system temp)")
    ap.add_argument("--screenshot", metavar="PNG", help="only write the picture of the page used in docs/explore.md")
    ap.add_argument("--repeat", type=int, default=3, help="in-page timings: the median of this many")
    ap.add_argument(
        "--page",
        action="append",
        default=[],
        metavar="HTML",
        help="also measure this page, written before by this script (e.g. by an older nenya; kept)",
    )
    add_save_args(ap, HERE / "RESULTS.md")
    args = ap.parse_args()
    if args.screenshot:
        screenshot(args.screenshot, args.chromium)
        return
    rows, kept = [], list(args.page)
    for n in [int(v) for v in args.n.split(",") if v]:
        folder = Path(tempfile.mkdtemp(prefix="nenya-bench-explorer-", dir=args.tmpdir))
        try:
            path, write_s = _page(folder, n, n_images=args.images, thumbs=args.thumbs, k=args.k)
            rows += [_row(Path(old).name, old, None, args) for old in kept]  # right before the first new page
            kept = []
            rows.append(_row(f"{n:,}", path, write_s, args))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    rows += [_row(Path(old).name, old, None, args) for old in kept]  # --n "": only the kept pages
    lines = [
        f"Clustered points with lat/lon, {args.thumbs} thumbnails, k={args.k}; headless Chromium 1250x1000 "
        f"without a GPU (the page then draws with its canvas backend); times in the page include two animation "
        f"frames (the redraw), medians of {args.repeat}; load average {load_average()}.",
        "",
    ]
    lines += markdown_table(
        [
            "points (page)",
            "shown",
            "page MB",
            "write s",
            "load s",
            "select ms (selected)",
            "filter ms",
            "filter cat ms",
            "clear ms",
            "export ms",
            "pan ms",
            "colour ms",
            "colour cat ms",
            "painter",
        ],
        rows,
    )
    report(args, f"explorer.py (n={args.n})", lines)


def _row(label: str, path: str, write_s: float | None, args) -> list[str]:
    m = _measure(path, args.chromium, args.repeat)
    row = [
        label,
        f"{m['shown']:,}",
        f"{os.path.getsize(path) / 1e6:.1f}",
        "—" if write_s is None else f"{write_s:.1f}",
        f"{m['load_s']:.1f}",
        f"{m['select_ms']:.0f} ({m['selected']:,})",
        *(f"{m[k]:.0f}" for k in ("filter_ms", "filter_cat_ms", "clear_ms", "export_ms", "pan_ms", "colour_ms")),
        f"{m['colour_cat_ms']:.0f}",
        m["painter"],
    ]
    print(row, flush=True)
    return row


if __name__ == "__main__":
    main()

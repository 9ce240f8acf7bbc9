"""The explorer page in headless Chromium: file size, load time, redraw and hover times at N points.

    python bench/explorer.py [--n 100000] [--thumbs 1000] [--k 10] [--chromium /usr/bin/chromium]

Needs playwright (Python) and a Chromium binary. The page's own timings (``window.nenyaExplorer.stats``:
the last full redraw and the last point-under-pointer lookup) are read after a pointer sweep; the tests
check the page's behaviour, this script how fast it is.
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
    """Write a page of ``n`` clustered points (four classes, SST cutouts as thumbnails); return it and the write time."""
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
        }
    )
    t = time.perf_counter()
    path = write_explorer(
        str(folder / "page.html"),
        xy[:, 0],
        xy[:, 1],
        table,
        vectors=vectors,
        images=ImageLookup(table, images=pre),
        color="label",
        k=k,
        max_thumbs=thumbs,
    )
    return path, time.perf_counter() - t


def _measure(path: str, chromium: str, sweeps: int) -> dict:
    """Open the page, sweep the pointer; the load time and the page's worst redraw and hover times."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            t = time.perf_counter()
            page.goto("file://" + path)
            page.wait_for_function("window.nenyaExplorer && window.nenyaExplorer.ready", timeout=120_000)
            load_s = time.perf_counter() - t
            box = page.locator("#canvas").bounding_box()
            draw, hover = [], []
            for i in range(sweeps):
                page.mouse.move(box["x"] + 300 + 20 * i, box["y"] + 300 + 10 * i)
                page.wait_for_timeout(50)  # let the requested frame draw
                stats = page.evaluate("window.nenyaExplorer.stats")
                draw.append(stats["drawMs"])
                hover.append(stats["hoverMs"])
        finally:
            browser.close()
    return {
        "load_s": load_s,
        "draw_ms": max(draw),
        "hover_ms": max(hover),
        "draw_med": float(np.median(draw)),
        "hover_med": float(np.median(hover)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="points on the page")
    ap.add_argument("--images", type=int, default=1000, help="cutouts in the preproc file the thumbnails come from")
    ap.add_argument("--thumbs", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--sweeps", type=int, default=10, help="pointer moves to time")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    ap.add_argument("--tmpdir", default=None, help="where the page is written (default: system temp)")
    add_save_args(ap, HERE / "RESULTS.md")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="nenya-bench-explorer-", dir=args.tmpdir))
    try:
        path, write_s = _page(folder, args.n, n_images=args.images, thumbs=args.thumbs, k=args.k)
        size_mb = os.path.getsize(path) / 1e6
        m = _measure(path, args.chromium, args.sweeps)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    rows = [
        [
            f"{args.n:,}",
            f"{size_mb:.1f}",
            f"{write_s:.1f}",
            f"{m['load_s']:.2f}",
            f"{m['draw_med']:.1f} / {m['draw_ms']:.1f}",
            f"{m['hover_med']:.2f} / {m['hover_ms']:.2f}",
        ]
    ]
    lines = [
        f"{args.n:,} points in four clusters, {args.thumbs} thumbnails, k={args.k}; headless Chromium "
        f"1200x800; redraw and hover over {args.sweeps} pointer moves (median / worst); "
        f"load average {load_average()}.",
        "",
    ]
    lines += markdown_table(["points", "page MB", "write s", "load s", "redraw ms", "hover ms"], rows)
    report(args, f"explorer.py (n={args.n})", lines)


if __name__ == "__main__":
    main()

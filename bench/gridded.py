"""Bounded memory on a gridded field larger than memory: ``xarray:`` extraction of a Zarr store.

Writes a (time, lat, lon) float32 Zarr store of ``--gb`` gigabytes (default 4: 64 daily 4096 x 4096
fields), one time step at a time, then cuts it into ``--tile`` cutouts and extracts them with a tiny
encoder (a strided conv: compute is cheap, so the run measures the source, the runner and the sink)
through nenya's full runner in a FRESH subprocess, with one reader process. Reported: the field's
size, the tiles, the time, and the peak RSS of the main process (``ru_maxrss``) and of the largest
reader (``RUSAGE_CHILDREN``), to compare with the field: bounded memory means both stay far below it.

    python bench/gridded.py                  # 4 GB
    python bench/gridded.py --gb 1 --keep    # smaller; keep the store for reruns

Prints a table and appends it, dated and with the machine, to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _report import add_save_args, load_average, markdown_table, report, tiny_encoder  # noqa: E402

SIDE = 4096


def write_store(path: str, steps: int, seed: int = 0) -> None:
    """``steps`` smooth random (SIDE x SIDE) fields with a band of NaN "land", appended one at a time."""
    import xarray as xr

    rng = np.random.default_rng(seed)
    lat, lon = np.linspace(-60, 60, SIDE), np.linspace(-180, 180, SIDE)
    base = np.cumsum(rng.standard_normal((SIDE, SIDE), dtype=np.float32), axis=1) * 0.01
    for t in range(steps):
        field = (base + rng.standard_normal((SIDE, SIDE), dtype=np.float32) * 0.1)[None]
        field[:, :, :256] = np.nan  # land: the first 4 columns of 64-pixel tiles are skipped
        ds = xr.Dataset(
            {"sst": (("time", "lat", "lon"), field)},
            coords={"time": [np.datetime64("2020-01-01") + np.timedelta64(t, "D")], "lat": lat, "lon": lon},
        )
        enc = {"sst": {"chunks": (1, 512, SIDE)}}
        if t == 0:
            ds.to_zarr(path, mode="w", encoding=enc, consolidated=False)
        else:
            ds.to_zarr(path, append_dim="time", consolidated=False)


def child(args: argparse.Namespace) -> int:

    from nenya.engines.runner import RunOptions, run
    from nenya.sinks.npy import NpySink
    from nenya.sources.gridded import GriddedSource

    encoder = tiny_encoder("bench-gridded-tiny-seed0")
    source = GriddedSource(args.store, var="sst", tile=args.tile, max_nan_fraction=0.5)
    sink = NpySink(args.out, overwrite=True, name="tiles.npy")
    opts = RunOptions(batch_size=256, num_workers=1, device="cpu", progress=False)
    t = time.perf_counter()
    try:
        summary = run(source, encoder, sink, opts)
    finally:
        source.close()
    print(
        json.dumps(
            {
                "items": summary.items,
                "skipped": summary.skipped,
                "seconds": time.perf_counter() - t,
                "self_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "readers_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            }
        )
    )
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=4.0, help="size of the field in GB (float32)")
    ap.add_argument("--tile", type=int, default=64)
    ap.add_argument("--tmpdir", default=None, help="where the store goes (needs --gb of free space)")
    ap.add_argument("--keep", action="store_true", help="keep the store (and reuse it when there)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    add_save_args(ap, HERE / "RESULTS.md")
    args = ap.parse_args()
    if args.child:
        sys.exit(child(args))
    steps = max(1, round(args.gb * 2**30 / (SIDE * SIDE * 4)))
    folder = Path(args.tmpdir or tempfile.gettempdir()) / f"nenya-bench-gridded-{steps}"
    store = folder / "sst.zarr"
    t = time.perf_counter()
    if not store.exists():
        folder.mkdir(parents=True, exist_ok=True)
        write_store(str(store), steps)
    written = time.perf_counter() - t
    size_gb = steps * SIDE * SIDE * 4 / 2**30
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--store",
        str(store),
        "--out",
        str(folder / "out"),
        "--tile",
        str(args.tile),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, TQDM_DISABLE="1"))
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    r = json.loads(out.stdout.strip().splitlines()[-1])
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    rows = [
        [
            f"{size_gb:.1f} GB ({steps} x {SIDE} x {SIDE})",
            f"{r['items']:,}",
            f"{r['skipped']:,}",
            f"{r['seconds']:.0f}",
            f"{r['items'] / r['seconds']:.0f}",
            f"{r['self_peak_mb']:.0f}",
            f"{r['readers_peak_mb']:.0f}",
        ]
    ]
    header = ["field", "tiles", "of which skipped (NaN)", "seconds", "tiles/s", "main peak MB", "reader peak MB"]
    lines = markdown_table(header, rows) + [
        "",
        f"`xarray:` source over a Zarr store (chunks 1 x 512 x {SIDE}, written in {written:.0f} s), {args.tile}x{args.tile} "
        f"tiles, a tiny conv encoder, one reader process, npy output; load average {load_average()}. Peak memory "
        "is each process's ru_maxrss: the readers load one band of rows per batch, not the field.",
    ]
    report(args, f"gridded.py ({size_gb:.1f} GB Zarr, tile {args.tile})", lines)


if __name__ == "__main__":
    main()

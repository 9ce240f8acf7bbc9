"""Peak memory of extracting N cutouts through nenya's full runner, with a tiny encoder.

The encoder is a nenya ``Encoder`` around Conv2d(3, 8, 3, stride=4) + ReLU + AdaptiveAvgPool +
Flatten + Linear(8, 16): compute is cheap, so memory (and time) reflect the pipeline: the
HDF5 source, the DataLoader reader worker, the writer thread, shard parts and the final sink.

For each N in ``--sizes`` a preproc file of N random float32 cutouts of ``--side`` px (default 64;
16 keeps a 1,000,000-item input at about 1 GB instead of 17 GB) (plus a Nenya-style
``valid_metadata`` string table unless ``--no-metadata``) is written in chunks under the temp
folder, then extracted in a FRESH subprocess (``memory.py --child``). Reported per run:

    main peak      ru_maxrss of the child's main process (getrusage RUSAGE_SELF, in the child)
    worker peak    the largest ru_maxrss of its reaped DataLoader workers (RUSAGE_CHILDREN, in the child)
    tree peak      the peak of the summed RSS of the child and all its descendants, polled with psutil
                   every --poll seconds (forked workers share pages with the parent, so this sum
                   over-counts shared pages: compare it between sizes, not with the main peak)

and the differences to the smallest N. Targets (from the issue): 100,000 within 500 MB of 1,000,
and 1,000,000 within 300 MB of 10,000 (``--sizes 10000,100000,1000000 --side 16``; at 64 px it needs
~17 GB free in the temp folder).

    python bench/memory.py                          # --sizes 1000,100000, NenyaLatentsSink
    python bench/memory.py --format h5,parquet
    python bench/memory.py --sizes 10000,100000,1000000 --side 16
    python bench/memory.py --sizes 10000,1000000 --tmpdir /big/scratch      # 64 px, ~17 GB of input

Prints a table and appends it, dated and with the machine, to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _report import add_save_args, markdown_table, report, tiny_encoder  # noqa: E402

RESULTS = HERE / "RESULTS.md"
TARGETS_MB = {(1000, 100_000): 500, (10_000, 1_000_000): 300}
MB = 2**20


# -- the input file, written in bounded memory -------------------------------------------------
def write_input(path: str, n: int, *, metadata: bool, side: int = 64, chunk: int = 4096, seed: int = 0) -> None:
    """N random float32 (1, side, side) cutouts in ``valid`` (contiguous, like Nenya's files) and,
    optionally, a ``valid_metadata`` byte-string table with a ``columns`` attribute; chunk by chunk."""
    rng = np.random.default_rng(seed)
    cols = ["lat", "lon", "datetime", "DT40", "pp_file", "pp_idx"]
    with h5py.File(path, "w") as f:
        dset = f.create_dataset("valid", (n, 1, side, side), dtype="float32")
        meta = None
        if metadata:
            meta = f.create_dataset("valid_metadata", (n, len(cols)), dtype="S48")
            meta.attrs["columns"] = [c.encode() for c in cols]
        for a in range(0, n, chunk):
            b = min(n, a + chunk)
            dset[a:b] = rng.standard_normal((b - a, 1, side, side), dtype=np.float32)
            if meta is not None:
                m = b - a
                days = rng.integers(0, 3650, m)
                meta[a:b] = np.column_stack(
                    [
                        np.round(rng.uniform(-60, 60, m), 4).astype(str),
                        np.round(rng.uniform(-180, 180, m), 4).astype(str),
                        (np.datetime64("2010-01-01") + days).astype(str),
                        np.round(rng.uniform(0, 5, m), 4).astype(str),
                        np.full(m, "MODIS_R2019_2010_95clear_128x128_preproc.h5"),
                        np.arange(a, b).astype(str),
                    ]
                ).astype("S48")


# -- the child: one extraction in a fresh process ----------------------------------------------
def child(args: argparse.Namespace) -> int:
    import torch

    from nenya.engines.runner import RunOptions, run
    from nenya.sources.hdf5 import HDF5PreprocSource

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.format == "baseline":  # imports only: what every run costs before it reads anything
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            json.dumps(
                {"items": 0, "seconds": 0.0, "rate": 0.0, "timings": {}, "self_peak_mb": peak, "workers_peak_mb": 0.0}
            )
        )
        return 0
    if args.format == "parquet":
        from nenya.sinks.parquet import ParquetSink as SinkClass
    else:
        from nenya.sinks.hdf5 import NenyaLatentsSink as SinkClass

    encoder = tiny_encoder("bench-memory-tiny-seed0")
    source = HDF5PreprocSource([args.file], partitions=("valid",))
    sink = SinkClass(args.out, overwrite=True)
    opts = RunOptions(
        batch_size=args.batch_size,
        num_workers=args.workers,
        device="cpu",
        progress=False,
        **({"shard_size": args.shard_size} if args.shard_size else {}),
    )
    try:
        summary = run(source, encoder, sink, opts)
    finally:
        source.close()
    print(
        json.dumps(
            {
                "items": summary.items,
                "seconds": summary.seconds,
                "rate": summary.rate,
                "timings": summary.timings.as_dict(),
                "outputs": summary.outputs,
                "self_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
                "workers_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            }
        )
    )
    return 0


# -- the parent: spawn, poll, report -----------------------------------------------------------
def measure(cmd: list[str], poll: float, pss: bool) -> tuple[dict, float, float, float]:
    """Run ``cmd``; return its JSON result, wall seconds, peak summed tree RSS (MB) and peak summed
    PSS (MB, 0 unless ``pss``)."""
    import psutil

    with tempfile.TemporaryFile("w+") as out:
        t0 = time.perf_counter()
        proc = psutil.Popen(cmd, stdout=out)
        peak_rss = peak_pss = 0.0
        while proc.poll() is None:
            try:
                procs = [proc] + proc.children(recursive=True)
            except psutil.Error:
                procs = [proc]
            rss = pss_sum = 0
            for p in procs:
                try:
                    if pss:
                        info = p.memory_full_info()
                        rss += info.rss
                        pss_sum += info.pss
                    else:
                        rss += p.memory_info().rss
                except psutil.Error:
                    pass
            peak_rss, peak_pss = max(peak_rss, rss / MB), max(peak_pss, pss_sum / MB)
            time.sleep(poll)
        wall = time.perf_counter() - t0
        out.seek(0)
        text = out.read()
    if proc.returncode != 0:
        raise SystemExit(f"child failed with exit code {proc.returncode}: {' '.join(cmd)}\n{text[-2000:]}")
    lines = [line for line in text.splitlines() if line.startswith("{")]
    if not lines:
        raise SystemExit(f"child printed no result: {' '.join(cmd)}\n{text[-2000:]}")
    return json.loads(lines[-1]), wall, peak_rss, peak_pss


def check_output(result: dict, n: int, fmt: str) -> str:
    """Shape/row count of the output without reading its data."""
    outs = result.get("outputs") or []
    if len(outs) != 1:
        return f"FAIL: outputs {outs}"
    if fmt == "parquet":
        import pyarrow.parquet as pq

        rows = pq.ParquetFile(outs[0]).metadata.num_rows
        return "ok" if rows == n else f"FAIL: {rows} rows"
    with h5py.File(outs[0], "r") as f:
        shape = f["valid"].shape
    return "ok" if shape == (n, 16) else f"FAIL: shape {shape}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="1000,100000", help="comma-separated N (default 1000,100000)")
    ap.add_argument("--format", default="h5", help="h5 (NenyaLatentsSink), parquet (ParquetSink) or h5,parquet")
    ap.add_argument(
        "--side", type=int, default=64, help="cutout side in px (default 64; 16 for 1M items on a small disk)"
    )
    ap.add_argument("--batch-size", type=int, default=128, help="RunOptions.batch_size (default 128)")
    ap.add_argument("--workers", type=int, default=1, help="RunOptions.num_workers (default 1)")
    ap.add_argument("--shard-size", type=int, default=None, help="RunOptions.shard_size (default: nenya's)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in the child")
    ap.add_argument("--no-metadata", action="store_true", help="write the inputs without valid_metadata")
    ap.add_argument("--poll", type=float, default=0.05, help="psutil polling interval in seconds (default 0.05)")
    ap.add_argument("--pss", action="store_true", help="also poll PSS (shared pages split fairly; costlier polling)")
    ap.add_argument("--tmpdir", default=None, help="where inputs and outputs go (default: system temp)")
    add_save_args(ap, RESULTS)
    # internal: the measured process
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--file", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)

    try:
        sizes = sorted({int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()})
    except ValueError:
        ap.error(f"--sizes must be comma-separated integers, got {args.sizes!r}")
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    if not sizes or min(sizes) < 1 or not formats or set(formats) - {"h5", "parquet"}:
        ap.error("--sizes must be positive integers and --format h5, parquet or h5,parquet")
    try:
        import psutil  # noqa: F401
    except ImportError:
        ap.error("memory.py needs psutil (pip install psutil)")

    tmp = tempfile.mkdtemp(prefix="nenya-bench-memory-", dir=args.tmpdir)
    need = max(sizes) * (args.side * args.side * 4 + 300) * 1.1 + 2**30
    free = shutil.disk_usage(tmp).free
    if free < need:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SystemExit(
            f"{tmp}: {free / 2**30:.1f} GiB free but the largest input and its outputs need about "
            f"{need / 2**30:.1f} GiB; pass --tmpdir on a bigger disk"
        )
    me = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        "--batch-size",
        str(args.batch_size),
        "--workers",
        str(args.workers),
    ]
    me += ["--threads", str(args.threads)] if args.threads else []
    me += ["--shard-size", str(args.shard_size)] if args.shard_size else []

    results = []
    try:
        base, _, base_tree, base_pss = measure(me + ["--format", "baseline"], args.poll, args.pss)
        print(f"baseline (python + torch + nenya imported, nothing read): {base['self_peak_mb']:.0f} MB", flush=True)
        for n in sizes:
            path = os.path.join(tmp, f"mem{n}_preproc.h5")
            t = time.perf_counter()
            write_input(path, n, metadata=not args.no_metadata, side=args.side)
            print(
                f"N={n}: wrote {os.path.getsize(path) / MB:.0f} MB input in {time.perf_counter() - t:.1f} s", flush=True
            )
            for fmt in formats:
                out = os.path.join(tmp, f"out-{n}-{fmt}")
                res, wall, tree, pss = measure(
                    me + ["--format", fmt, "--file", path, "--out", out], args.poll, args.pss
                )
                check = check_output(res, n, fmt)
                results.append({"n": n, "format": fmt, "wall": wall, "tree": tree, "pss": pss, "check": check, **res})
                print(
                    f"  {fmt}: {res['seconds']:.1f} s, main peak {res['self_peak_mb']:.0f} MB, worker peak "
                    f"{res['workers_peak_mb']:.0f} MB, tree peak {tree:.0f} MB, output {check}",
                    flush=True,
                )
                shutil.rmtree(out, ignore_errors=True)
            os.remove(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    # -- report ---------------------------------------------------------------------------------
    header = ["sink", "N", "seconds", "images/s", "µs/item", "main peak MB", "worker peak MB", "tree peak MB"]
    header += ["tree PSS MB"] if args.pss else []
    header += ["Δ main vs smallest", "Δ tree vs smallest"] + (["Δ PSS vs smallest"] if args.pss else [])
    header += ["target", "output"]
    rows = []
    verdicts = []
    for r in results:
        first = next(x for x in results if x["format"] == r["format"])
        d_main = r["self_peak_mb"] - first["self_peak_mb"]
        d_tree = r["tree"] - first["tree"]
        target = TARGETS_MB.get((first["n"], r["n"]))
        verdict = ""
        if target is not None:
            worst = max(d_main, d_tree)
            verdict = f"≤{target} MB: {'PASS' if worst <= target else 'FAIL'}"
            verdicts.append(worst <= target)
        row = [
            r["format"],
            f"{r['n']:,}",
            f"{r['seconds']:.1f}",
            f"{r['rate']:.0f}",
            f"{r['seconds'] / max(1, r['n']) * 1e6:.0f}",
            f"{r['self_peak_mb']:.0f}",
            f"{r['workers_peak_mb']:.0f}",
            f"{r['tree']:.0f}",
        ]
        row += [f"{r['pss']:.0f}"] if args.pss else []
        row += [f"{d_main:+.0f}", f"{d_tree:+.0f}"] + ([f"{r['pss'] - first['pss']:+.0f}"] if args.pss else [])
        row += [verdict, r["check"]]
        rows.append(row)
    stage_lines = [
        f"- {r['format']} N={r['n']:,}: " + ", ".join(f"{k} {v:.1f} s" for k, v in r["timings"].items())
        for r in results
    ]
    lines = [
        f"Tiny encoder (Conv2d(3,8,3,s4)+ReLU+pool+Linear(8,16)) through nenya's runner; random float32 {args.side}x{args.side} inputs"
        f"{'' if args.no_metadata else ' with a 6-column valid_metadata table'}; batch {args.batch_size}, "
        f"{args.workers} reader worker(s){f', shard {args.shard_size}' if args.shard_size else ''}. "
        f"Each run in a fresh process; baseline after imports {base['self_peak_mb']:.0f} MB (tree {base_tree:.0f} MB). "
        "main peak = child's ru_maxrss; worker peak = largest DataLoader worker ru_maxrss; tree peak = polled "
        f"sum of RSS over the child and its workers (every {args.poll} s; pages shared after fork count in each process)"
        + ("; tree PSS = the same sum of PSS (shared pages split between processes)." if args.pss else "."),
        "",
        *markdown_table(header, rows),
        "",
        "Stages (read = waiting for the reader, write = writer thread busy, finalize = assembling the output):",
        *stage_lines,
    ]
    report(args, f"memory.py (sizes {','.join(map(str, sizes))}, {args.format})", lines)
    failed = any(r["check"] != "ok" for r in results) or not all(verdicts)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

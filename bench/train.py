"""Training speed: images/s of contrastive training in fp32 and bf16, eager and compiled, in one run.

Each configuration trains SimCLR (Nenya's SupConResNet, ``--model``) on synthetic 64x64 SST cutouts
for two epochs of ``--batches`` batches in a FRESH subprocess (``train.py --child``); the figure is
the second epoch's images/s from ``learning_curve.csv`` (the first holds torch.compile's compilation
and the allocator's warm-up). Health metrics and validation are off, so the figure is training alone.

bf16 is only meaningful on a CPU with native bf16 (``avx512_bf16`` or ``amx_bf16`` in
/proc/cpuinfo) or on a GPU; without it the bf16 rows measure emulation, and the table says so.

    python bench/train.py                        # resnet18, batch 64, 12 batches per epoch
    python bench/train.py --device cuda          # on a GPU machine (bench/gpu.sh runs this)

Prints a table and appends it, dated and with the machine, to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _report import HERE, add_save_args, load_average, markdown_table, report  # noqa: E402

CONFIGS = (("fp32", False), ("bf16", False), ("fp32", True), ("bf16", True))


def _child(args) -> dict:
    from nenya.sample_data import write_preproc
    from nenya.train.contrastive import demo_opts, train_run
    from nenya.train.health import HealthOptions

    folder = tempfile.mkdtemp(prefix="nenya-bench-train-")
    n = args.batch * args.batches
    data = write_preproc(os.path.join(folder, "bench_preproc.h5"), n_valid=0, n_train=n, seed=0)
    opts = demo_opts(data, folder, ssl_model=args.model, batch_size=args.batch, epochs=2, valid_freq=1000)
    t = time.perf_counter()
    summary = train_run(
        opts,
        progress=False,
        output=os.path.join(folder, "m"),
        device=args.device,
        precision=args.precision,
        compile=args.compile,
        health=HealthOptions(enabled=False),
    )
    with open(os.path.join(folder, "m", "learning_curve.csv")) as f:
        rates = [float(r["images_per_s"]) for r in csv.DictReader(f) if r["kind"] == "train_epoch"]
    return {"images_per_s": rates[-1], "first_epoch": rates[0], "seconds": time.perf_counter() - t,
            "steps": summary.steps}  # fmt: skip


def _bf16_native() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    except (OSError, StopIteration):
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=12, help="batches per epoch")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds per configuration")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    ap.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    add_save_args(ap, HERE / "RESULTS.md")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(args)))
        return
    rows, base = [], None
    for precision, compiled in CONFIGS:
        cmd = [sys.executable, __file__, "--child", "--precision", precision, "--model", args.model,
               "--batch", str(args.batch), "--batches", str(args.batches), "--device", args.device]  # fmt: skip
        cmd += ["--compile"] if compiled else []
        name = f"{precision}, {'compiled' if compiled else 'eager'}"
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            rows.append([name, "-", "-", "-", f"over {args.timeout:.0f} s"])
            continue
        if out.returncode:
            last = (out.stderr.strip().splitlines() or ["?"])[-1][:120]
            rows.append([name, "-", "-", "-", f"failed: {last}"])
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        base = base or r["images_per_s"]
        rows.append(
            [name, f"{r['images_per_s']:.1f}", f"{r['images_per_s'] / base:.2f}", f"{r['first_epoch']:.1f}", ""]
        )
        print(rows[-1], flush=True)
    header = ["precision, mode", "images/s (epoch 2)", "vs fp32 eager", "images/s (epoch 1)", "note"]
    native = _bf16_native() or args.device != "cpu"
    lines = markdown_table(header, rows) + [
        "",
        f"SimCLR {args.model}, batch {args.batch}, 64x64 synthetic cutouts, {args.batches} batches per epoch, "
        f"device {args.device}; load average {load_average()}. "
        + ("" if native else "**This CPU has no native bf16 (no avx512_bf16/amx_bf16): the bf16 rows measure "
           "emulation, not what a bf16 CPU does; `--precision auto` trains in fp32 here.**"),
    ]  # fmt: skip
    report(args, f"train.py ({args.model}, batch {args.batch}, {args.device})", lines)


if __name__ == "__main__":
    main()

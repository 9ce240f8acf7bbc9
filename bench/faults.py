"""Never lose work: SIGKILL ``nenya extract`` at random moments, rerun, compare with a clean run.

For each output format (h5, parquet) one uninterrupted reference run, then kill-rerun cycles
(``tests/faultkit.py``): each cycle starts the same CLI command into a fresh folder, SIGKILLs it
``--kills-per-cycle`` times in a row at a delay drawn from a seeded RNG within the measured run
time (counted from the moment the model is loaded), reruns it until it completes, and compares
the output with the reference: ids lost or duplicated, files that fail to open, vectors that are
not bit-identical, the status table (every id once), and anything left behind.

By default runs are forked from a process that has already imported torch (``--mode fork``, what
the CI suite uses: 2-4 s of imports saved per run); ``--mode subprocess`` starts a fresh
``python -m nenya`` for every run.

    python bench/faults.py                       # 200 kills, split over h5 and parquet
    python bench/faults.py --kills 40 --seed 1 --mode subprocess

Prints a table (format, kills, runs, lost, duplicated, unreadable, mismatched, seconds) and
appends it, dated and with the machine, to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
import faultkit as fk  # noqa: E402
from _report import append_results, markdown_table  # noqa: E402

RESULTS = HERE / "RESULTS.md"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=200, help="random SIGKILLs in total, split over the formats")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--formats", default="h5,parquet")
    ap.add_argument("--kills-per-cycle", type=int, default=2, help="kills in a row before the completing rerun")
    ap.add_argument("--n", type=int, default=128, help="cutouts per input (valid 3/4, train 1/4)")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--mode", choices=["fork", "subprocess"], default="fork")
    ap.add_argument("--no-save", action="store_true", help="do not append to RESULTS.md")
    args = ap.parse_args()

    rng = random.Random(args.seed)
    formats = [f for f in args.formats.split(",") if f]
    tmp = Path(tempfile.mkdtemp(prefix="nenya-bench-faults-"))
    rows, problems = [], []
    try:
        ckpt = fk.make_model(tmp / "model")
        with fk.Zygote() if args.mode == "fork" else nullcontext() as zygote:
            for i, fmt in enumerate(formats):
                target = args.kills // len(formats) + (i < args.kills % len(formats))
                job = fk.make_job(
                    tmp / fmt,
                    fmt=fmt,
                    n_valid=args.n * 3 // 4,
                    n_train=args.n - args.n * 3 // 4,
                    workers=args.workers,
                    ckpt=ckpt,
                )
                ref = fk.reference(job, tmp / fmt / "ref", zygote=zygote)
                t0 = time.perf_counter()
                kills = runs = cycles = 0
                bad = {
                    "lost": 0,
                    "duplicated": 0,
                    "unreadable": 0,
                    "mismatched": 0,
                    "status": 0,
                    "left": 0,
                    "failed": 0,
                }
                while kills < target:
                    folder = tmp / fmt / f"c{cycles}"
                    c = fk.kill_cycle(
                        job, folder, ref, rng, kills=min(args.kills_per_cycle, target - kills), zygote=zygote
                    )
                    kills, runs, cycles = kills + c.kills, runs + c.runs, cycles + 1
                    r = c.report
                    for k in ("lost", "duplicated", "unreadable", "mismatched", "status", "left"):
                        bad[k] += len(getattr(r, k))
                    bad["failed"] += bool(c.failures)
                    if not r.ok or c.failures:
                        problems.append(f"{fmt} cycle {cycles}: {r}; failures {c.failures[:1]}; {c.log}")
                        print(problems[-1], file=sys.stderr)
                    else:
                        shutil.rmtree(folder, ignore_errors=True)
                    print(f"\r{fmt}: {kills}/{target} kills, {runs} runs, {cycles} cycles", end="", file=sys.stderr)
                print(file=sys.stderr)
                rows.append(
                    [
                        fmt,
                        str(kills),
                        str(runs),
                        str(bad["lost"]),
                        str(bad["duplicated"]),
                        str(bad["unreadable"]),
                        str(bad["mismatched"]),
                        str(bad["status"]),
                        str(bad["left"]),
                        str(bad["failed"]),
                        f"{time.perf_counter() - t0:.0f}",
                    ]
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    header = [
        "format",
        "kills",
        "runs",
        "lost",
        "duplicated",
        "unreadable",
        "mismatched",
        "status errors",
        "left behind",
        "failed reruns",
        "seconds",
    ]
    table = markdown_table(header, rows)
    print("\n".join(table))
    if not args.no_save:
        note = [
            f"Random SIGKILLs of `nenya extract` (resnet18 SupCon, feat_dim 16, {args.n} 16x16 cutouts per "
            f"input, --batch-size 16 --shard-size 32 --workers {args.workers}, one torch thread), "
            f"{args.kills_per_cycle} kills in a row per cycle then a completing rerun, runs by {args.mode}; "
            'each output compared with an uninterrupted reference (vectors bit-identical). "left behind": '
            "work folders, temporaries or locks remaining after the completing rerun.",
            "",
        ]
        if problems:
            note += ["", "Problems:", ""] + [f"- {p[:400]}" for p in problems[:10]]
        append_results(RESULTS, "Fault injection (bench/faults.py)", note + table)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

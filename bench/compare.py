"""Time and peak memory of `nenya duplicates`, `nenya compare --same-items` and `nenya compare`.

Each job runs in a FRESH subprocess (``compare.py --child JOB N``) that makes its vectors itself
(seeded), so its peak RSS (``ru_maxrss``) is the job's own: the vectors, the indexes and the
results. Vectors are ``--dim``-d (default 128, the size of Nenya's latents), in 1,000 Gaussian
clusters; for ``duplicates`` 1% of the rows are near-copies of others (noise 1% of the spread) and the
threshold is fixed at 1.0; for ``same-items`` B is an orthogonal rotation of A plus noise; for
``collections`` B is drawn like A with one cluster shifted. For ``same-items`` above 20,000 items the
result gives the IVF's recall@10 in A and B on 1,000 sampled items and their mean overlap with the
approximate and with exact neighbours (the approximation's bias).

    python bench/compare.py                           # 100000,1000000 vectors; all three jobs
    python bench/compare.py --sizes 100000 --jobs duplicates

Prints a table and appends it, dated and with the machine, to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _report import HERE, add_save_args, load_average, markdown_table, report  # noqa: E402

JOBS = ("duplicates", "same-items", "collections")


def _vectors(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(1000, d)).astype(np.float32) * 2
    x = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, 100_000):  # in slabs: the generator's float64 temporaries stay small
        e = min(s + 100_000, n)
        x[s:e] = centres[rng.integers(0, 1000, e - s)] + rng.normal(size=(e - s, d)).astype(np.float32)
    return x


def _child(job: str, n: int, d: int) -> dict:
    x = _vectors(n, d, seed=0)
    ids = np.arange(n).astype(str).astype(object)
    data_mb = x.nbytes / 2**20
    t = time.perf_counter()
    if job == "duplicates":
        from nenya.analysis.duplicates import find_duplicates

        rng = np.random.default_rng(1)
        dup = rng.choice(n, n // 100, replace=False)
        x[dup] = x[(dup + 1) % n] + 0.01 * rng.normal(size=(len(dup), d)).astype(np.float32)
        t = time.perf_counter()
        r = find_duplicates((ids, x), threshold=1.0, progress=False)
        found = f"{len(r.pairs):,} pairs ({len(dup):,} planted)"
    elif job == "same-items":
        from nenya.analysis.compare import compare_encodings

        q, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(d, d)))
        y = x @ q.astype(np.float32) + 0.05 * np.random.default_rng(3).normal(size=(n, d)).astype(np.float32)
        data_mb *= 2
        t = time.perf_counter()
        r = compare_encodings((ids, x), (ids, y), k=10, progress=False)
        found = f"overlap {r.mean_overlap:.3f}, CKA {r.cka:.4f} ({r.search}"
        if not r.exact:  # the approximation's recall and its effect on the overlap, on the sampled items
            found += (
                f"; recall@10 {r.recall_a:.4f} / {r.recall_b:.4f} on {r.recall_queries:,} items, whose overlap is "
                f"{r.sample_overlap:.4f} (exact {r.sample_overlap_exact:.4f})"
            )
        found += ")"
    else:
        from nenya.analysis.shift import compare_collections

        y = _vectors(n, d, seed=0)
        y[: n // 20] += 0.5  # one part of B shifted
        data_mb *= 2
        t = time.perf_counter()
        r = compare_collections((ids, x), (ids, y), progress=False)
        found = f"MMD p {r.mmd_p:.3g}, classifier p {r.classifier_p:.3g}"
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_mb": peak, "data_mb": data_mb, "found": found}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000", help="vectors per collection, comma-separated")
    ap.add_argument("--jobs", default=",".join(JOBS), help=f"comma-separated, from {', '.join(JOBS)}")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--child", nargs=2, metavar=("JOB", "N"), help=argparse.SUPPRESS)
    add_save_args(ap, HERE / "RESULTS.md")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(args.child[0], int(args.child[1]), args.dim)))
        return
    rows = []
    for job in args.jobs.split(","):
        for n in (int(s) for s in args.sizes.split(",")):
            cmd = [sys.executable, __file__, "--child", job, str(n), "--dim", str(args.dim)]
            out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, TQDM_DISABLE="1"))
            if out.returncode:
                raise SystemExit(f"{job} {n}: {out.stderr[-2000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(
                [job, f"{n:,}", f"{r['seconds']:.1f}", f"{r['peak_mb']:.0f}", f"{r['data_mb']:.0f}", r["found"]]
            )
            print(rows[-1], flush=True)
    header = ["job", "vectors", "seconds", "peak MB", "vectors MB", "result"]
    lines = markdown_table(header, rows)
    lines += [
        "",
        f"{args.dim}-d float32 vectors in 1,000 clusters; each job in a fresh process (peak = its ru_maxrss, "
        f"vectors included); load average {load_average()}. `collections` runs the MMD (2,500 per side, "
        "1,000 permutations), the classifier test and k-means (20) on the union.",
    ]
    report(args, f"compare.py (n={args.sizes}, d={args.dim})", lines)


if __name__ == "__main__":
    main()

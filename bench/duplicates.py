"""Near-duplicates at scale: `nenya.analysis.find_duplicates` against a plain FAISS IVF range search
(the 40 lines anyone would write: IVFFlat trained on the vectors, nprobe 8, range search in chunks)
on the same clustered vectors with planted near-duplicate pairs, in the same run: time and recall of
the planted pairs; and `--auto`'s threshold.

python bench/duplicates.py --sizes 200000,1000000 --dim 128
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from _report import HERE, append_results, load_average, markdown_table
from nenya.analysis.duplicates import find_duplicates


def planted(n: int, d: int, *, share: float = 0.01, noise: float = 0.02, clusters: int = 64, seed: int = 0):
    """``n`` clustered ``d``-d vectors (float32) and ``share`` of them in planted pairs (a copy of another
    vector plus Gaussian noise of ``noise`` per dimension); the pairs as (a, b) row arrays, a < b."""
    rng = np.random.default_rng(seed)
    centres = (rng.normal(0, 1, (clusters, d)) * 4).astype(np.float32)
    x = np.empty((n, d), np.float32)
    for s in range(0, n, 262_144):  # in slabs: bounded temporary memory at any n
        e = min(n, s + 262_144)
        x[s:e] = centres[rng.integers(0, clusters, e - s)] + rng.normal(0, 1, (e - s, d)).astype(np.float32)
    m = int(share * n / 2)
    perm = rng.permutation(n)[: 2 * m]
    a, b = perm[:m], perm[m:]
    x[b] = x[a] + rng.normal(0, noise, (m, d)).astype(np.float32)
    return x, (np.minimum(a, b), np.maximum(a, b))


def faiss_baseline(x: np.ndarray, threshold: float, nlist: int, nprobe: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (a < b) within ``threshold`` (L2) by a plain FAISS IVFFlat range search."""
    import faiss

    d = x.shape[1]
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist)
    index.train(x)
    index.add(x)
    index.nprobe = nprobe
    out_a, out_b = [], []
    for s in range(0, len(x), 16_384):
        lims, _, rows = index.range_search(x[s : s + 16_384], threshold**2)
        owner = np.repeat(np.arange(s, s + len(lims) - 1), np.diff(lims.astype(np.int64)))
        keep = rows > owner
        out_a.append(owner[keep])
        out_b.append(rows[keep])
    return np.concatenate(out_a), np.concatenate(out_b)


def recall(a: np.ndarray, b: np.ndarray, want: tuple[np.ndarray, np.ndarray], n: int) -> float:
    found = set((a.astype(np.int64) * n + b).tolist())
    planted_keys = (want[0].astype(np.int64) * n + want[1]).tolist()
    return sum(k in found for k in planted_keys) / max(1, len(planted_keys))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,200000,1000000")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--threshold", type=float, default=1.0)
    ap.add_argument("--exact-up-to", type=int, default=200_000, help="also time the exhaustive search up to this n")
    ap.add_argument("--no-write", action="store_true", help="print only; do not append to RESULTS.md")
    args = ap.parse_args()
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        x, want = planted(n, args.dim)
        ids = np.array([f"i{i}" for i in range(n)], dtype=object)
        nlist = 1024 if n <= 300_000 else 4096
        t = time.perf_counter()
        a, b = faiss_baseline(x, args.threshold, nlist)
        base = time.perf_counter() - t
        r_base = recall(a, b, want, n)
        runs = [("nenya", {}), ("nenya --auto", {"auto": True})]
        if n <= args.exact_up_to:
            runs.append(("nenya --exact", {"exact": True}))
        for name, kw in runs:
            t = time.perf_counter()
            thr = None if kw.get("auto") else args.threshold
            r = find_duplicates((ids, x), threshold=thr, progress=False, **kw)
            took = time.perf_counter() - t
            ra = np.array([int(s[1:]) for s in r.pairs["id_a"]], np.int64)
            rb = np.array([int(s[1:]) for s in r.pairs["id_b"]], np.int64)
            rec = recall(ra, rb, want, n)
            planted_share = 1 - len(set((ra * n + rb).tolist()) - set((want[0] * n + want[1]).tolist())) / max(
                1, len(ra)
            )
            rows.append([f"{n:,}", name, f"{r.threshold:.3g}", f"{took:.1f}", f"{base:.1f}", f"{took / base:.2f}",
                         f"{rec:.3f}", f"{r_base:.3f}", f"{planted_share:.3f}"])  # fmt: skip
            print(" | ".join(rows[-1]), flush=True)
    head = ["n", "run", "threshold", "s", "FAISS IVF s", "ratio", "recall", "FAISS recall", "reported planted"]
    table = markdown_table(head, rows)
    print("\n".join(table))
    if not args.no_write:
        append_results(
            HERE / "RESULTS.md",
            "Near-duplicates against a plain FAISS IVF range search (bench/duplicates.py)",
            [*table, "", f"{args.dim}-d clustered vectors, 1% in planted pairs (noise 0.02/dim), "
             f"threshold {args.threshold} (L2); baseline: IVFFlat (nlist 1024 up to 300k, else 4096) trained on "
             f"all vectors, nprobe 8, in the same run; load average {load_average()}."],
        )  # fmt: skip


if __name__ == "__main__":
    main()

"""Similarity search: build and query times and recall@10 of nenya's FAISS indexes on random vectors.

python bench/search.py --n 100000 --dim 32 --queries 500
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from _report import HERE, append_results, machine_line, markdown_table
from nenya.analysis import build_index


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--no-write", action="store_true", help="print only; do not append to RESULTS.md")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.n, args.dim)).astype(np.float32)
    q = rng.normal(size=(args.queries, args.dim)).astype(np.float32)
    configs = [
        ("flat", {}),
        ("hnsw", {"m": 32, "ef_search": 64}),
        ("hnsw", {"m": 32, "ef_search": 128}),
        ("hnsw", {"m": 32, "ef_search": 256}),
        ("ivf", {"nlist": 256, "nprobe": 64}),
        ("ivf", {"nlist": 256, "nprobe": 128}),
    ]
    rows, exact, built = [], None, {}
    for kind, params in configs:
        key = (kind, params.get("m"), params.get("nlist"))
        t = time.perf_counter()
        if key not in built:
            built[key] = build_index(x, kind=kind, **params)
            build_s = time.perf_counter() - t
        else:
            build_s = float("nan")
        idx = built[key]
        if kind == "hnsw":
            idx.index.hnsw.efSearch = params["ef_search"]
        if kind == "ivf":
            idx.index.nprobe = params["nprobe"]
        t = time.perf_counter()
        got = idx.search(q, args.k)[2]
        search_s = time.perf_counter() - t
        if exact is None:
            exact = got
        recall = np.mean([len(set(a) & set(b)) / args.k for a, b in zip(exact, got)])
        desc = ", ".join(f"{k}={v}" for k, v in params.items()) or "exact"
        rows.append(
            [
                kind,
                desc,
                "—" if np.isnan(build_s) else f"{build_s:.1f}",
                f"{1000 * search_s / args.queries:.3f}",
                f"{recall:.3f}",
            ]
        )
        print(rows[-1], flush=True)
    table = markdown_table(["index", "params", "build s", "ms/query", f"recall@{args.k}"], rows)
    lines = [
        f"{args.n:,} random N(0,1) vectors of {args.dim}-d, {args.queries} random queries, k={args.k}; "
        "recall against the exact flat index; build once per (kind, M / nlist), searched in one batch.",
        "",
    ] + table
    print(machine_line())
    print("\n".join(table))
    if not args.no_write:
        append_results(HERE / "RESULTS.md", f"search.py (n={args.n}, dim={args.dim})", lines)


if __name__ == "__main__":
    main()

"""``nenya index|search``: a FAISS similarity index of a latents file, and nearest-neighbour queries."""

from __future__ import annotations

import argparse
import json
import sys

from nenya._errors import NenyaError
from nenya.cli._latents import HELP_FORMAT, add_latents_args, partitions


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``index`` and ``search`` to the ``nenya`` parser."""
    _add_index(sub)
    _add_search(sub)


def _add_index(sub: argparse._SubParsersAction) -> None:
    """``nenya index``: a FAISS similarity index."""
    p = sub.add_parser(
        "index",
        help="build a FAISS similarity index of a latents file",
        description="Writes <name>.faiss and <name>.ids.parquet (the id of each index row). kind auto: "
        "exact flat up to 100,000 vectors, HNSW above.",
        formatter_class=HELP_FORMAT,
    )
    add_latents_args(p, output_help="output .faiss file or folder")
    p.add_argument(
        "--kind", default="auto", choices=["auto", "flat", "hnsw", "ivf"], help="index type (auto: see above)"
    )
    p.add_argument(
        "--metric", default="l2", choices=["l2", "ip", "cosine"], help="l2: Euclidean; ip: inner product; cosine"
    )
    p.add_argument("--m", type=int, default=32, help="HNSW links per node")
    p.add_argument("--ef-search", type=int, default=128, help="HNSW search breadth")
    p.add_argument("--nlist", type=int, default=None, help="IVF lists (default ~4 sqrt(N))")
    p.add_argument("--nprobe", type=int, default=None, help="IVF lists visited per query")
    p.set_defaults(func=cmd_index)


def _add_search(sub: argparse._SubParsersAction) -> None:
    """``nenya search``: nearest neighbours of an id, a vector or an image."""
    p = sub.add_parser(
        "search",
        help="nearest neighbours of an id, a vector or an image",
        description="Search an index (.faiss from `nenya index`) or a latents file (exact search). "
        "Prints rank, id and score, and writes <name>_search.parquet.",
        formatter_class=HELP_FORMAT,
    )
    p.add_argument("target", help="an index (.faiss) or a latents file")
    p.add_argument("--output", "-o", help="output Parquet file or folder")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--id", help="an id in the index (itself left out of the results)")
    q.add_argument("--vector", help="a query vector: comma-separated numbers")
    q.add_argument("--vector-file", help="query vectors: a .npy file of (dim,) or (Q, dim)")
    q.add_argument(
        "--image",
        help="a query image encoded by --model: a .npy cutout for SupCon models, an image file for photo models",
    )
    p.add_argument(
        "--model",
        help="model spec for --image, as for `nenya extract` (supcon:last.pth, timm:NAME, ...); "
        "default: the model the latents record, with its options",
    )
    p.add_argument("--opts", help="opts JSON of a checkpoint without options (with --model)")
    p.add_argument(
        "--trust-checkpoint", action="store_true", help="allow pickled objects in the checkpoint (trusted files only)"
    )
    p.add_argument("-k", type=int, default=10, help="neighbours to return")
    p.add_argument(
        "--metric", default="l2", choices=["l2", "ip", "cosine"], help="metric when searching a latents file"
    )
    p.add_argument("--ef-search", type=int, default=None, help="HNSW search breadth (overrides the index's)")
    p.add_argument("--nprobe", type=int, default=None, help="IVF lists visited (overrides the index's)")
    p.set_defaults(func=cmd_search)


def cmd_index(args: argparse.Namespace) -> int:
    """Build and save a FAISS index (``<name>.faiss`` and its ids); print its path."""
    import time

    from nenya.analysis import build_index, open_latents, output_path, read_about

    t = time.perf_counter()
    with open_latents(args.latents, partitions=partitions(args), metadata=False) as lat:
        index = build_index(
            lat,
            kind=args.kind,
            metric=args.metric,
            m=args.m,
            ef_search=args.ef_search,
            nlist=args.nlist,
            nprobe=args.nprobe,
        )
    index.about = read_about(args.latents)  # so `nenya search INDEX --image` encodes queries the same way
    path, ids = index.save(output_path(args.latents, ".faiss", args.output))
    print(
        f"{index.kind} index of {index.n:,} x {index.dim} ({index.metric}) in {time.perf_counter() - t:.1f} s; "
        f"ids in {ids}",
        file=sys.stderr,
    )
    print(path)
    return 0


def _query(args, about: dict | None = None):
    import numpy as np

    if args.vector:
        try:
            return np.array([[float(v) for v in args.vector.split(",") if v.strip()]], dtype=np.float32)
        except ValueError:
            raise NenyaError(f"--vector must be comma-separated numbers; got {args.vector[:40]!r}") from None
    if args.vector_file:
        q = np.load(args.vector_file, allow_pickle=False).astype(np.float32)
        return q.reshape(1, -1) if q.ndim == 1 else q
    if args.image:
        return _encode_query(args, about)
    return None


def _encode_query(args, about: dict | None):
    """Encode ``--image`` with the model that made the latents: the one they record (its spec,
    photo options and opts file) unless ``--model`` names another."""
    from nenya.analysis.query import QueryEncoder

    if not args.model and not (about or {}).get("model"):
        raise NenyaError(
            "--image needs --model SPEC: these latents do not record the model that made them (see `nenya models`)"
        )
    encoder = QueryEncoder.from_about(about, model=args.model, opts=args.opts, trust_checkpoint=args.trust_checkpoint)
    return encoder.encode_file(args.image)


def cmd_search(args: argparse.Namespace) -> int:
    """Print the nearest neighbours of ``--id``, ``--vector(-file)`` or ``--image``; write them to Parquet."""
    import pandas as pd

    from nenya.analysis import output_path, write_table
    from nenya.analysis.search import open_index

    index = open_index(args.target, metric=args.metric, ef_search=args.ef_search, nprobe=args.nprobe)
    if args.id is not None:
        ids, scores, _ = index.search_id(args.id, args.k)
        queries = [args.id]
    else:
        q = _query(args, index.about)
        ids, scores, _ = index.search(q, args.k)
        queries = [f"query{i}" for i in range(len(q))]
    rows = []
    for qi, name in enumerate(queries):
        for r in range(ids.shape[1]):
            if ids[qi, r] is None:
                continue
            rows.append({"query": name, "rank": r + 1, "id": str(ids[qi, r]), "score": float(scores[qi, r])})
    df = pd.DataFrame(rows, columns=["query", "rank", "id", "score"])
    out = write_table(
        df,
        output_path(args.target, "_search.parquet", args.output),
        metadata={"nenya_search": json.dumps({"metric": index.metric, "kind": index.kind})},
    )
    label = "squared L2" if index.metric == "l2" else index.metric
    for rec in rows:
        print(f"{rec['query']}\t{rec['rank']}\t{rec['id']!s}\t{rec['score']:.6g}", file=sys.stderr)
    print(f"({len(rows)} hits, score = {label}; {index.kind} index)", file=sys.stderr)
    print(out)
    return 0

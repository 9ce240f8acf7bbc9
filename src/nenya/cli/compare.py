"""``nenya compare`` and ``nenya duplicates``: questions across collections and models.

``compare A B``: does collection B land where A does (two-sample tests, cluster shares, a joint
projection)? ``compare A B --same-items``: do two encodings of the same items keep their
neighbourhoods? ``duplicates X``: near-duplicate groups and leakage between splits.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from nenya._errors import NenyaError
from nenya.cli._latents import HELP_FORMAT, LATENTS_HELP, add_latents_args, partitions

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``compare`` and ``duplicates`` to the ``nenya`` parser."""
    _add_compare(sub)
    _add_duplicates(sub)


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="shift between two collections, or agreement of two encodings of the same items",
        description="Two collections made by the same model: MMD² with a permutation p-value, a classifier "
        "two-sample test, k-means cluster shares with a test per cluster, a joint projection (PNG and explorer "
        "page). With --same-items, two encodings of the same ids: kNN overlap@k per item and linear CKA. "
        "Writes report.md, report.html, summary.json and the tables as Parquet into the output folder.",
        formatter_class=HELP_FORMAT,
    )
    p.add_argument("a", help="collection A: " + LATENTS_HELP)
    p.add_argument("b", help="collection B (or the second encoding, with --same-items)")
    p.add_argument("--output", "-o", help="output folder (default: <A>_vs_<B>_compare/ next to A)")
    p.add_argument("--partitions", default=None, help="HDF5 partitions to read, comma-separated (default: valid,train)")
    p.add_argument("--same-items", action="store_true", help="A and B encode the same ids: compare neighbourhoods")
    p.add_argument("--force", action="store_true", help="compare collections whose model records disagree")
    p.add_argument("--names", help="the two collections' names, comma-separated (default: the file stems)")
    p.add_argument("--sample", type=int, default=2500, help="items per side for the two-sample tests")
    p.add_argument("--permutations", type=int, default=1000, help="permutations for the MMD p-value")
    p.add_argument("--clusters", type=int, default=20, help="k-means clusters of the union")
    p.add_argument("--projection", default="umap", choices=["umap", "pca", "none"], help="joint projection")
    p.add_argument(
        "--images",
        nargs="+",
        metavar="PREPROC",
        help="preproc HDF5 file(s) of A's and B's cutouts (one file: both); photos with a path column need none",
    )
    p.add_argument("--image-root", help="folder that relative paths in the 'path' column are relative to")
    p.add_argument("-k", type=int, default=10, help="neighbours per item (--same-items)")
    p.add_argument("--metric", default="l2", choices=["l2", "ip", "cosine"], help="neighbour metric (--same-items)")
    p.add_argument(
        "--exact", action="store_true", help="exact neighbours at any size (--same-items; default: exact up to "
        "20,000 items, IVF beyond with its recall measured on 1,000 sampled items; exact time grows as n^2)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seeds the samples, permutations, k-means and projection")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_compare)


def _names(args) -> tuple[str, str] | None:
    if not args.names:
        return None
    names = [n.strip() for n in args.names.split(",")]
    if len(names) != 2 or not all(names) or names[0] == names[1]:
        raise NenyaError(f"--names takes two different names, comma-separated; got {args.names!r}")
    return names[0], names[1]


def _out_dir(args) -> str:
    from nenya.analysis import output_path
    from nenya.pipeline import storage

    if args.output:
        return args.output.rstrip("/") or "."
    stem_b = os.path.basename(output_path(args.b, ""))
    out = output_path(args.a, f"_vs_{stem_b}_compare")
    if storage.is_remote(out):
        raise NenyaError(f"write the report to a local folder: give --output DIR (A is remote: {args.a})")
    return out


def _images(args, r, metas):
    from nenya.analysis import ImageLookup
    from nenya.analysis.compare_report import JointImages

    files = list(args.images or [])
    if len(files) > 2:
        raise NenyaError(f"--images takes one preproc file per collection (at most 2); got {len(files)}")
    tables = (metas[0].iloc[r.rows_a], metas[1].iloc[r.rows_b])
    if not files and not all("path" in t.columns for t in tables):
        return None
    files = files or [None, None]
    files = files * 2 if len(files) == 1 else files
    a, b = (ImageLookup(t, images=f, image_root=args.image_root) for t, f in zip(tables, files))
    return JointImages(a, b, len(tables[0]))


def cmd_compare(args: argparse.Namespace) -> int:
    """Compare two latents files; write the report folder and print its page's path."""
    from nenya.analysis import open_latents

    out = _out_dir(args)
    names = _names(args)
    if args.same_items:
        return _compare_same_items(args, out, names)
    from nenya.analysis.shift import check_same_model

    if not args.force:
        check_same_model(args.a, args.b)
    # opened, not read: the tests read samples, the clusters stream the vectors (memory-mapped .npy)
    with (
        open_latents(args.a, partitions=partitions(args)) as xa,
        open_latents(args.b, partitions=partitions(args)) as xb,
    ):
        return _compare_collections(args, out, names, xa, xb)


def _compare_collections(args, out: str, names, xa, xb) -> int:
    from nenya.analysis.compare_report import write_shift_report
    from nenya.analysis.shift import compare_collections

    meta_a, meta_b = xa.metadata, xb.metadata
    if names is None:
        from nenya.analysis import output_path

        stems = (os.path.basename(output_path(args.a, "")), os.path.basename(output_path(args.b, "")))
        names = stems if stems[0] != stems[1] else ("A", "B")
    r = compare_collections(
        xa,
        xb,
        sample=args.sample,
        permutations=args.permutations,
        clusters=args.clusters,
        seed=args.seed,
        force=True,
        names=names,
        progress=not args.no_progress,
    )
    images = _images(args, r, (meta_a, meta_b))
    paths = write_shift_report(
        r,
        out,
        vectors=(xa, xb),
        metas=(meta_a, meta_b),
        projection=args.projection,
        images=images,
        seed=args.seed,
        progress=not args.no_progress,
    )
    print(f"{names[0]}: {r.n_a:,} items, {names[1]}: {r.n_b:,} items", file=sys.stderr)
    print(
        f"MMD² {r.mmd2:.4g} (p = {r.mmd_p:.3g}); classifier accuracy {r.accuracy:.3f} (p = {r.classifier_p:.3g})",
        file=sys.stderr,
    )
    top = r.over_represented(1).iloc[0]
    print(
        f"most over-represented in {names[1]}: cluster {top.cluster} ({top.share_a:.1%} -> {top.share_b:.1%})",
        file=sys.stderr,
    )
    print(paths["html"])
    return 0


def _compare_same_items(args, out: str, names) -> int:
    from nenya.analysis import output_path, read_latents
    from nenya.analysis.compare import EXACT_LIMIT, compare_encodings
    from nenya.analysis.compare_report import write_agreement_report

    ids_a, xa, _ = read_latents(args.a, partitions=partitions(args))
    ids_b, xb, _ = read_latents(args.b, partitions=partitions(args))
    if names is None:
        names = (os.path.basename(output_path(args.a, "")), os.path.basename(output_path(args.b, "")))
        names = names if names[0] != names[1] else ("A", "B")
    r = compare_encodings(
        (ids_a, xa),
        (ids_b, xb),
        k=args.k,
        metric=args.metric,
        exact_limit=sys.maxsize if args.exact else EXACT_LIMIT,
        progress=not args.no_progress,
    )
    paths = write_agreement_report(r, out, names)
    print(f"{r.n:,} items in both ({r.only_a:,} only in {names[0]}, {r.only_b:,} only in {names[1]})", file=sys.stderr)
    print(f"mean kNN overlap@{r.k} {r.mean_overlap:.4f}; linear CKA {r.cka:.4f}", file=sys.stderr)
    if r.exact:
        print("neighbours: exact", file=sys.stderr)
    else:
        print(
            f"neighbours: approximate, {r.search}; recall@{r.k} {r.recall_a:.3f} in {names[0]}, {r.recall_b:.3f} in "
            f"{names[1]} on {r.recall_queries:,} sampled items, whose mean overlap is {r.sample_overlap:.4f} "
            f"(exact neighbours: {r.sample_overlap_exact:.4f}); --exact for exact neighbours",
            file=sys.stderr,
        )
    print(paths["html"])
    return 0


def _add_duplicates(sub: argparse._SubParsersAction) -> None:
    """``nenya duplicates``: near-duplicate groups and leakage between splits."""
    p = sub.add_parser(
        "duplicates",
        help="near-duplicate groups of a latents file, and leakage between splits",
        description="Range search with FAISS (exact up to 20,000 vectors, IVF above; 8-bit codes and an exact "
        "re-check when the vectors pass 1 GiB, see --codes), groups by union-find, "
        "one representative each. Writes <name>_duplicates.parquet (id, group, representative, distance) and, "
        "with a split (--split-column, or the partition column), <name>_leakage.parquet (pairs across splits).",
        formatter_class=HELP_FORMAT,
    )
    add_latents_args(p, output_help="output folder (ending in /) or the duplicates .parquet file")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--threshold", type=float, help="distance under which two items are near-duplicates")
    how.add_argument("--auto", action="store_true", help="choose the threshold from the nearest-neighbour distances")
    p.add_argument("--metric", default="l2", choices=["l2", "cosine"], help="l2: Euclidean; cosine: 1 - cos")
    p.add_argument("--split-column", help="metadata column of each item's split (default: partition, if any)")
    p.add_argument(
        "--nprobe", type=int, default=8, help="IVF cells (of about 4 sqrt(n)) searched per query, above 20,000 vectors"
    )
    p.add_argument(
        "--exact", action="store_true", help="search every pair exhaustively (time grows as n^2; the IVF finds the same "
        "near-duplicates in the benchmark, bench/duplicates.py)",
    )  # fmt: skip
    p.add_argument(
        "--codes", default="auto", choices=["auto", "flat", "sq8"], help="flat: the vectors in memory (float32); "
        "sq8: the vectors left on disk, an index of 8-bit codes, candidates re-checked exactly (same pairs, less "
        "memory, slower); auto: sq8 when the vectors take over 1 GiB as float32",
    )  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_duplicates)


def cmd_duplicates(args: argparse.Namespace) -> int:
    """Write the duplicate groups (and leakage) tables; print their paths."""
    from nenya.analysis import output_path, write_table
    from nenya.analysis.duplicates import find_duplicates
    from nenya.analysis.latents import open_latents

    with open_latents(args.latents, partitions=partitions(args)) as lat:
        n = lat.n
        r = find_duplicates(
            lat,
            threshold=args.threshold,
            auto=args.auto,
            metric=args.metric,
            split_column=args.split_column,
            nprobe=args.nprobe,
            exact=args.exact,
            codes=args.codes,
            progress=not args.no_progress,
        )
    out = output_path(args.latents, "_duplicates.parquet", args.output)
    write_table(r.groups, out)
    print(f"threshold {r.threshold:.4g} ({r.how})", file=sys.stderr)
    print(
        f"{len(r.pairs):,} near-duplicate pairs in {r.groups['group'].nunique():,} groups of {n:,} items",
        file=sys.stderr,
    )
    print(out)
    if r.leakage is not None:
        leak = (
            out[: -len("_duplicates.parquet")] + "_leakage.parquet"
            if out.endswith("_duplicates.parquet")
            else (out.rsplit(".", 1)[0] + "_leakage.parquet")
        )
        write_table(r.leakage, leak)
        print(f"{len(r.leakage):,} pairs across splits (leakage)", file=sys.stderr)
        print(leak)
    return 0

"""``nenya umap|pca|cluster``: projections and cluster labels of a latents file, as Parquet tables."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from nenya._errors import NenyaError
from nenya.cli._latents import HELP_FORMAT, add_image_args, add_latents_args, partitions

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``umap``, ``pca`` and ``cluster`` to the ``nenya`` parser."""
    _add_umap(sub)
    _add_pca(sub)
    _add_cluster(sub)


def _add_umap(sub: argparse._SubParsersAction) -> None:
    """``nenya umap``: a 2-D UMAP of a latents file."""
    p = sub.add_parser(
        "umap",
        help="2-D UMAP of a latents file (fit on a sample, transform the rest)",
        description="Fit UMAP on at most --ntrain random vectors and place every vector; writes "
        "<name>_umap.parquet (id, metadata, U0, U1) next to the input or to --output. With --knn K it is "
        "also the table embedding-atlas opens: a 'neighbors' column (each row's K nearest rows in latent "
        "space, as zero-based row indices) and, where the collection has images, an 'image' column of PNG "
        "thumbnails; the embedding-atlas command that opens it is printed.",
        formatter_class=HELP_FORMAT,
    )
    add_latents_args(p, output_help="output Parquet file or folder")
    p.add_argument("--ntrain", type=int, default=200_000, help="largest sample UMAP is fitted on")
    p.add_argument("--neighbors", type=int, default=15, help="UMAP n_neighbors: the neighbourhood it preserves")
    p.add_argument("--min-dist", type=float, default=0.1, help="UMAP min_dist: how tightly points pack")
    p.add_argument("--seed", type=int, default=42, help="seeds the sample and UMAP (random_state)")
    p.add_argument("--chunk", type=int, default=50_000, help="vectors per transform call (bounds memory)")
    p.add_argument(
        "--transform-all", action="store_true", help="also pass the fitted sample through transform (Nenya's way)"
    )
    p.add_argument(
        "--save-model",
        metavar="NAME",
        help="also keep the fitted UMAP as <UMAP dir>/NAME_UMAP.pkl (for `nenya serve --umap-model` "
        "and nenya.analyze_image); the UMAP dir is $NENYA_UMAP_DIR",
    )
    p.add_argument(
        "--knn",
        type=int,
        default=0,
        metavar="K",
        help="also write each row's K nearest other rows in latent space as embedding-atlas's 'neighbors' "
        "column (0: none; --neighbors is UMAP's own n_neighbors)",
    )
    p.add_argument(
        "--knn-metric",
        default="l2",
        choices=["l2", "cosine"],
        help="distance of the --knn neighbours: l2 (Euclidean) or cosine (1 - cos)",
    )
    add_image_args(p)
    p.set_defaults(func=cmd_umap)


def _add_pca(sub: argparse._SubParsersAction) -> None:
    """``nenya pca``: principal components of a latents file."""
    p = sub.add_parser(
        "pca",
        help="principal components of a latents file",
        description="Writes <name>_pca.parquet (id, metadata, PC0..PCn-1; explained variance in the "
        "file's metadata) and prints the explained variance ratios.",
        formatter_class=HELP_FORMAT,
    )
    add_latents_args(p, output_help="output Parquet file or folder")
    p.add_argument("-n", "--components", type=int, default=10, help="principal components to keep")
    p.add_argument(
        "--incremental",
        action="store_true",
        default=None,
        help="stream the file through IncrementalPCA (default: above 200,000 vectors)",
    )
    p.add_argument("--batch-size", type=int, default=50_000, help="vectors per IncrementalPCA step")
    p.set_defaults(func=cmd_pca)


def _add_cluster(sub: argparse._SubParsersAction) -> None:
    """``nenya cluster``: k-means and/or HDBSCAN labels."""
    p = sub.add_parser(
        "cluster",
        help="k-means and/or HDBSCAN labels of a latents file",
        description="Writes <name>_clusters.parquet (id, metadata, kmeans and/or hdbscan labels).",
        formatter_class=HELP_FORMAT,
    )
    add_latents_args(p, output_help="output Parquet file or folder")
    p.add_argument("--method", default="kmeans", help="kmeans, hdbscan, or both: kmeans,hdbscan")
    p.add_argument("-k", "--clusters", type=int, default=10, help="k-means clusters")
    p.add_argument("--min-cluster-size", type=int, default=15, help="HDBSCAN smallest cluster")
    p.add_argument("--pca", type=int, default=0, help="reduce to this many principal components first (0: no)")
    p.add_argument("--seed", type=int, default=0, help="seeds k-means")
    p.set_defaults(func=cmd_cluster)


def _table_with(lat, extra: dict):
    import pandas as pd

    df = lat.metadata.copy()
    df.insert(0, "id", lat.ids)
    for k, v in extra.items():
        df[k] = v
    return pd.DataFrame(df)


def cmd_umap(args: argparse.Namespace) -> int:
    """Write ``<name>_umap.parquet`` (id, metadata, U0, U1; with ``--knn`` embedding-atlas's neighbours
    and thumbnails); print its path (and, with ``--knn``, the embedding-atlas command to stderr)."""
    from nenya.analysis import fit_umap, open_latents, output_path, write_table

    if args.knn < 0:
        raise NenyaError(f"--knn must be 0 (no neighbours) or more; got {args.knn}")
    if (args.images or args.image_root) and not args.knn:
        raise NenyaError("--images and --image-root add embedding-atlas's thumbnails: they go with --knn K")
    with open_latents(args.latents, partitions=partitions(args)) as lat:
        res = fit_umap(
            lat,
            ntrain=args.ntrain,
            chunk=args.chunk,
            transform_all=args.transform_all,
            n_neighbors=args.neighbors,
            min_dist=args.min_dist,
            seed=args.seed,
        )
        df = _table_with(lat, {"U0": res.embedding[:, 0], "U1": res.embedding[:, 1]})
        atlas = _atlas_columns(df, lat, args) if args.knn else {}
    if args.save_model:
        from nenya.analysis.umap_files import save_umap, umap_dir
        from nenya.pipeline.storage import safe_name

        name = safe_name(args.save_model, what="--save-model")
        print(save_umap(res.reducer, umap_dir() / f"{name}_UMAP.pkl"), file=sys.stderr)
    settings = {
        "ntrain": len(res.train_rows),
        "seed": args.seed,
        "n_neighbors": args.neighbors,
        "min_dist": args.min_dist,
    }
    dest = output_path(args.latents, "_umap.parquet", args.output)
    if not args.knn:
        print(write_table(df, dest, metadata={"nenya_umap": json.dumps(settings)}))
        return 0
    from nenya.analysis.atlas import IMAGE, atlas_command, write_with_columns

    settings |= {"knn": args.knn, "knn_metric": args.knn_metric}
    out = write_with_columns(df, atlas, dest, metadata={"nenya_umap": json.dumps(settings)})
    print(f"open it in embedding-atlas: {atlas_command(out, image=IMAGE in atlas)}", file=sys.stderr)
    print(out)
    return 0


def _atlas_columns(df, lat, args: argparse.Namespace) -> dict:
    """embedding-atlas's ``neighbors`` column and, where the rows have images, its ``image`` column (Arrow)."""
    from nenya.analysis.atlas import IMAGE, NEIGHBORS, knn, neighbors_column, thumbnail_column

    for name in (NEIGHBORS, IMAGE):
        if name in df.columns:
            log.warning("the latents' own %r column is replaced by embedding-atlas's", name)
    rows, dist, counts = knn(lat, args.knn, metric=args.knn_metric, chunk=args.chunk)
    cols = {NEIGHBORS: neighbors_column(rows, dist, counts)}
    del rows, dist
    if args.images or args.image_root or "path" in df.columns:
        from nenya.analysis import ImageLookup

        lookup = ImageLookup(df, images=args.images, image_root=args.image_root)
        if lookup.kind is not None:
            cols[IMAGE] = thumbnail_column(lookup, len(df))
    return cols


def cmd_pca(args: argparse.Namespace) -> int:
    """Write ``<name>_pca.parquet`` (id, metadata, PC0..); print the explained variance and the path."""
    from nenya.analysis import open_latents, output_path, pca, write_table

    with open_latents(args.latents, partitions=partitions(args)) as lat:
        res = pca(lat, args.components, incremental=args.incremental, batch_size=args.batch_size)
        df = _table_with(lat, {f"PC{j}": res.scores[:, j] for j in range(res.scores.shape[1])})
    ratios = [round(float(r), 6) for r in res.explained_variance_ratio]
    out = write_table(
        df,
        output_path(args.latents, "_pca.parquet", args.output),
        metadata={
            "nenya_pca": json.dumps(
                {
                    "explained_variance_ratio": ratios,
                    "explained_variance": res.explained_variance.tolist(),
                    "incremental": res.incremental,
                }
            )
        },
    )
    print(
        "explained variance ratio: " + " ".join(f"{r:.4f}" for r in ratios) + f" (total {sum(ratios):.4f})",
        file=sys.stderr,
    )
    print(out)
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    """Write ``<name>_clusters.parquet`` (k-means and/or HDBSCAN labels); print counts and the path."""
    from nenya.analysis import hdbscan, kmeans, open_latents, output_path, pca, write_table

    methods = [m.strip() for m in args.method.split(",") if m.strip()]
    bad = [m for m in methods if m not in ("kmeans", "hdbscan")]
    if bad or not methods:
        raise NenyaError(
            f"unknown --method {','.join(bad) or args.method!r}; expected kmeans, hdbscan or kmeans,hdbscan"
        )
    with open_latents(args.latents, partitions=partitions(args)) as lat:
        x = pca(lat, args.pca).scores if args.pca else lat.vectors()
        cols = {}
        if "kmeans" in methods:
            cols["kmeans"] = kmeans(x, args.clusters, seed=args.seed)[0]
        if "hdbscan" in methods:
            cols["hdbscan"] = hdbscan(x, min_cluster_size=args.min_cluster_size)
        df = _table_with(lat, cols)
    out = write_table(df, output_path(args.latents, "_clusters.parquet", args.output))
    import numpy as np

    for k, v in cols.items():
        print(f"{k}: {len(set(v.tolist()) - {-1})} clusters, {int(np.sum(v == -1))} noise", file=sys.stderr)
    print(out)
    return 0

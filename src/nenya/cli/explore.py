"""``nenya umap|pca|cluster|index|search|plot|explore``: sub-commands over latents files."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from nenya._errors import NenyaError

log = logging.getLogger(__name__)

LATENTS_HELP = (
    "latents file: X_latents.h5 (Nenya), X.parquet (with a vector column) or X.npy (+ X.parquet); path or URL"
)


_fmt = argparse.ArgumentDefaultsHelpFormatter


def _common(p, *, output_help: str) -> None:
    p.add_argument("latents", help=LATENTS_HELP)
    p.add_argument("--output", "-o", help=output_help)
    p.add_argument("--partitions", default=None, help="HDF5 partitions to read, comma-separated (default: valid,train)")


def _parts(args) -> list[str] | None:
    return [p for p in args.partitions.split(",") if p] if getattr(args, "partitions", None) else None


def register(sub: argparse._SubParsersAction) -> None:
    """Add the exploration sub-commands to the ``nenya`` parser."""
    _add_umap(sub)
    _add_pca(sub)
    _add_cluster(sub)
    _add_index(sub)
    _add_search(sub)
    _add_plot(sub)
    _add_explore(sub)


def _add_umap(sub: argparse._SubParsersAction) -> None:
    """``nenya umap``: a 2-D UMAP of a latents file."""
    p = sub.add_parser(
        "umap",
        help="2-D UMAP of a latents file (fit on a sample, transform the rest)",
        description="Fit UMAP on at most --ntrain random vectors and place every vector; writes "
        "<name>_umap.parquet (id, metadata, U0, U1) next to the input or to --output.",
        formatter_class=_fmt,
    )
    _common(p, output_help="output Parquet file or folder")
    p.add_argument("--ntrain", type=int, default=200_000, help="largest sample UMAP is fitted on")
    p.add_argument("--neighbors", type=int, default=15)
    p.add_argument("--min-dist", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=42)
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
    p.set_defaults(func=cmd_umap)


def _add_pca(sub: argparse._SubParsersAction) -> None:
    """``nenya pca``: principal components of a latents file."""
    p = sub.add_parser(
        "pca",
        help="principal components of a latents file",
        description="Writes <name>_pca.parquet (id, metadata, PC0..PCn-1; explained variance in the "
        "file's metadata) and prints the explained variance ratios.",
        formatter_class=_fmt,
    )
    _common(p, output_help="output Parquet file or folder")
    p.add_argument("-n", "--components", type=int, default=10)
    p.add_argument(
        "--incremental",
        action="store_true",
        default=None,
        help="stream the file through IncrementalPCA (default: above 200,000 vectors)",
    )
    p.add_argument("--batch-size", type=int, default=50_000)
    p.set_defaults(func=cmd_pca)


def _add_cluster(sub: argparse._SubParsersAction) -> None:
    """``nenya cluster``: k-means and/or HDBSCAN labels."""
    p = sub.add_parser(
        "cluster",
        help="k-means and/or HDBSCAN labels of a latents file",
        description="Writes <name>_clusters.parquet (id, metadata, kmeans and/or hdbscan labels).",
        formatter_class=_fmt,
    )
    _common(p, output_help="output Parquet file or folder")
    p.add_argument("--method", default="kmeans", help="kmeans, hdbscan, or both: kmeans,hdbscan")
    p.add_argument("-k", "--clusters", type=int, default=10, help="k-means clusters")
    p.add_argument("--min-cluster-size", type=int, default=15, help="HDBSCAN smallest cluster")
    p.add_argument("--pca", type=int, default=0, help="reduce to this many principal components first (0: no)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_cluster)


def _add_index(sub: argparse._SubParsersAction) -> None:
    """``nenya index``: a FAISS similarity index."""
    p = sub.add_parser(
        "index",
        help="build a FAISS similarity index of a latents file",
        description="Writes <name>.faiss and <name>.ids.parquet (the id of each index row). kind auto: "
        "exact flat up to 100,000 vectors, HNSW above.",
        formatter_class=_fmt,
    )
    _common(p, output_help="output .faiss file or folder")
    p.add_argument("--kind", default="auto", choices=["auto", "flat", "hnsw", "ivf"])
    p.add_argument("--metric", default="l2", choices=["l2", "ip", "cosine"])
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
        formatter_class=_fmt,
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
    p.add_argument("-k", type=int, default=10)
    p.add_argument(
        "--metric", default="l2", choices=["l2", "ip", "cosine"], help="metric when searching a latents file"
    )
    p.add_argument("--ef-search", type=int, default=None, help="HNSW search breadth (overrides the index's)")
    p.add_argument("--nprobe", type=int, default=None, help="IVF lists visited (overrides the index's)")
    p.set_defaults(func=cmd_search)


def _add_plot(sub: argparse._SubParsersAction) -> None:
    """``nenya plot scatter|gallery|neighbours``: PNG pictures."""
    p = sub.add_parser(
        "plot",
        help="PNG pictures: UMAP scatter, image gallery, neighbour strip",
        description="scatter/gallery read a table with coordinates (e.g. the output of `nenya umap`); "
        "neighbours reads a latents file (or --index).",
        formatter_class=_fmt,
    )
    ps = p.add_subparsers(dest="plot", metavar="KIND", required=True)
    s = ps.add_parser("scatter", help="points of the UMAP plane coloured by a column", formatter_class=_fmt)
    s.add_argument("table", help="a table with the coordinates (e.g. x_latents_umap.parquet)")
    s.add_argument("--color", help="column to colour by")
    _plot_common(s)
    s.set_defaults(func=cmd_plot_scatter)
    g = ps.add_parser("gallery", help="one image per occupied cell of the UMAP grid", formatter_class=_fmt)
    g.add_argument("table", help="a table with the coordinates and partition/row or path columns")
    g.add_argument("--nxy", type=int, default=16, help="grid cells per axis")
    g.add_argument("--min-pts", type=int, default=1, help="fewest points for a cell to get an image")
    g.add_argument("--seed", type=int, default=0)
    _plot_common(g)
    _image_args(g)
    g.set_defaults(func=cmd_plot_gallery)
    nb = ps.add_parser(
        "neighbours", aliases=["neighbors"], help="a query and its k nearest neighbours", formatter_class=_fmt
    )
    nb.add_argument("latents", help=LATENTS_HELP)
    nb.add_argument("--id", required=True, help="the query id")
    nb.add_argument("-k", type=int, default=8)
    nb.add_argument("--index", help="a .faiss index of the same latents (default: exact search)")
    nb.add_argument("--output", "-o", help="output PNG file or folder")
    _image_args(nb)
    nb.set_defaults(func=cmd_plot_neighbours)


def _add_explore(sub: argparse._SubParsersAction) -> None:
    """``nenya explore``: the interactive HTML explorer."""
    p = sub.add_parser(
        "explore",
        help="write an interactive HTML explorer (one self-contained file)",
        description="Linked projection (UMAP) and map views with box/lasso selection, filters, colour-by, "
        "hover images, nearest neighbours of a clicked point and CSV export of a selection, in one HTML "
        "file that works offline (Bokeh). Writes <name>_explorer.html.",
        formatter_class=_fmt,
    )
    _common(p, output_help="output HTML file or folder")
    p.add_argument("--coords", help="a table with id and U0/U1 (from `nenya umap`); default: fit UMAP here")
    p.add_argument("--color", help="column coloured at first")
    p.add_argument("-k", type=int, default=10, help="neighbours listed per point")
    p.add_argument("--metric", default="l2", choices=["l2", "ip", "cosine"])
    p.add_argument(
        "--max-points", type=int, default=250_000, help="beyond this, show (and export from) a stated random sample"
    )
    p.add_argument("--lat", help="latitude column of the map view (default: lat or latitude when present)")
    p.add_argument("--lon", help="longitude column of the map view (default: lon or longitude when present)")
    p.add_argument("--thumbs", type=int, default=2000, help="points with a thumbnail (spread over the plane)")
    p.add_argument("--ntrain", type=int, default=50_000, help="UMAP sample when there is no --coords")
    p.add_argument("--title", default=None)
    _image_args(p)
    p.set_defaults(func=cmd_explore)


def _plot_common(p) -> None:
    p.add_argument("--x", default=None, help="x column (default: U0, US0 or PC0, whichever exists)")
    p.add_argument("--y", default=None, help="y column (default: U1, US1 or PC1)")
    p.add_argument("--output", "-o", help="output PNG file or folder")


def _image_args(p) -> None:
    p.add_argument("--images", help="preproc HDF5 file of the cutouts (rows matched by partition/row)")
    p.add_argument("--image-root", help="folder that relative paths in the 'path' column are relative to")


def _xy(df, args) -> tuple[str, str]:
    cols: tuple[str, str] | None
    if args.x and args.y:
        cols = (args.x, args.y)
    else:
        cols = next(((a, b) for a, b in (("U0", "U1"), ("US0", "US1"), ("PC0", "PC1")) if a in df and b in df), None)
        if cols is None:
            raise NenyaError(
                "the table has no U0/U1, US0/US1 or PC0/PC1 columns; run `nenya umap LATENTS` first "
                "and plot its _umap.parquet, or name the columns with --x and --y"
            )
    for c in cols:
        if c not in df.columns:
            raise NenyaError(f"no column {c!r}; columns: {', '.join(map(str, df.columns[:20]))}")
    return cols


def _table_with(lat, extra: dict):
    import pandas as pd

    df = lat.metadata.copy()
    df.insert(0, "id", lat.ids)
    for k, v in extra.items():
        df[k] = v
    return pd.DataFrame(df)


def cmd_umap(args: argparse.Namespace) -> int:
    """Write ``<name>_umap.parquet`` (id, metadata, U0, U1); print its path."""
    from nenya.analysis import fit_umap, open_latents, output_path, write_table

    with open_latents(args.latents, partitions=_parts(args)) as lat:
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
    if args.save_model:
        from nenya.analysis.umap_files import save_umap, umap_dir
        from nenya.pipeline.storage import safe_name

        name = safe_name(args.save_model, what="--save-model")
        print(save_umap(res.reducer, umap_dir() / f"{name}_UMAP.pkl"), file=sys.stderr)
    out = write_table(
        df,
        output_path(args.latents, "_umap.parquet", args.output),
        metadata={
            "nenya_umap": json.dumps(
                {
                    "ntrain": len(res.train_rows),
                    "seed": args.seed,
                    "n_neighbors": args.neighbors,
                    "min_dist": args.min_dist,
                }
            )
        },
    )
    print(out)
    return 0


def cmd_pca(args: argparse.Namespace) -> int:
    """Write ``<name>_pca.parquet`` (id, metadata, PC0..); print the explained variance and the path."""
    from nenya.analysis import open_latents, output_path, pca, write_table

    with open_latents(args.latents, partitions=_parts(args)) as lat:
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
    with open_latents(args.latents, partitions=_parts(args)) as lat:
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


def cmd_index(args: argparse.Namespace) -> int:
    """Build and save a FAISS index (``<name>.faiss`` and its ids); print its path."""
    import time

    from nenya.analysis import build_index, open_latents, output_path, read_about

    t = time.perf_counter()
    with open_latents(args.latents, partitions=_parts(args), metadata=False) as lat:
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


def _open_index(target: str, metric: str, ef_search=None, nprobe=None):
    from nenya.analysis import build_index, load_index, open_latents, read_about

    if target.endswith(".faiss"):
        return load_index(target, ef_search=ef_search, nprobe=nprobe)
    with open_latents(target, metadata=False) as lat:
        index = build_index(lat, kind="flat", metric=metric)
    index.about = read_about(target)
    return index


def cmd_search(args: argparse.Namespace) -> int:
    """Print the nearest neighbours of ``--id``, ``--vector(-file)`` or ``--image``; write them to Parquet."""
    import pandas as pd

    from nenya.analysis import output_path, write_table

    index = _open_index(args.target, args.metric, args.ef_search, args.nprobe)
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


def cmd_plot_scatter(args: argparse.Namespace) -> int:
    """Write a PNG scatter of the table's plane coordinates, coloured by ``--color``."""
    from nenya.analysis import output_path, read_table, scatter_plot

    df = read_table(args.table)
    x, y = _xy(df, args)
    if args.color and args.color not in df.columns:
        raise NenyaError(f"no column {args.color!r} to colour by; columns: {', '.join(map(str, df.columns[:30]))}")
    out = scatter_plot(
        df[x],
        df[y],
        output_path(args.table, "_scatter.png", args.output),
        color=df[args.color] if args.color else None,
        color_name=args.color,
        xlabel=x,
        ylabel=y,
    )
    print(out)
    return 0


def _lookup(df, args):
    from nenya.analysis import ImageLookup

    lookup = ImageLookup(df, images=args.images, image_root=args.image_root)
    if lookup.kind is None:
        raise NenyaError(
            "no images to show: give --images X_preproc.h5 (SST latents) or use latents with a 'path' column (photos)"
        )
    return lookup


def cmd_plot_gallery(args: argparse.Namespace) -> int:
    """Write a PNG gallery: one image per occupied cell of the plane's grid."""
    from nenya.analysis import gallery_plot, output_path, read_table

    df = read_table(args.table)
    x, y = _xy(df, args)
    lookup = _lookup(df, args)
    out = gallery_plot(
        df[x].to_numpy(),
        df[y].to_numpy(),
        lookup.get,
        output_path(args.table, "_gallery.png", args.output),
        nxy=args.nxy,
        min_pts=args.min_pts,
        seed=args.seed,
        kind=lookup.kind or "anomaly",
        xlabel=x,
        ylabel=y,
    )
    print(out)
    return 0


def cmd_plot_neighbours(args: argparse.Namespace) -> int:
    """Write a PNG strip: the query image and its ``k`` nearest neighbours."""
    from nenya.analysis import build_index, load_index, neighbours_plot, open_latents, output_path

    with open_latents(args.latents) as lat:
        df = lat.metadata.copy()
        df.insert(0, "id", lat.ids)
        index = load_index(args.index) if args.index else build_index(lat, kind="flat")
    ids, scores, _ = index.search_id(args.id, args.k)
    pos = {v: i for i, v in enumerate(df["id"].tolist())}
    hits = [str(i) for i in ids[0] if i is not None]
    rows = [pos[args.id]] + [pos[i] for i in hits]
    lookup = _lookup(df, args)
    labels = [f"query {args.id}"] + [f"{i} ({s:.3g})" for i, s in zip(hits, scores[0])]
    out = neighbours_plot(
        lookup.get(rows),
        labels,
        output_path(args.latents, "_neighbours.png", args.output),
        kind=lookup.kind or "anomaly",
        title=f"{len(hits)} nearest neighbours ({index.metric})",
    )
    print(out)
    return 0


def cmd_explore(args: argparse.Namespace) -> int:
    """Write the self-contained HTML explorer (``<name>_explorer.html``); print its path."""
    from nenya.analysis import ImageLookup, open_latents, output_path, write_explorer
    from nenya.analysis.explorer import plane_coordinates

    with open_latents(args.latents, partitions=_parts(args)) as lat:
        vectors = lat.vectors()
        df = lat.metadata.copy()
        df.insert(0, "id", lat.ids)
    u0, u1, xlab, ylab = plane_coordinates(df, vectors, coords=args.coords, ntrain=args.ntrain)
    if not args.coords:
        df["U0"], df["U1"] = u0, u1
    lookup = None
    if args.images or "path" in df.columns:
        lookup = ImageLookup(df, images=args.images, image_root=args.image_root)
    out = write_explorer(
        output_path(args.latents, "_explorer.html", args.output),
        u0,
        u1,
        df,
        vectors=vectors,
        images=lookup,
        color=args.color,
        k=args.k,
        metric=args.metric,
        max_points=args.max_points,
        max_thumbs=args.thumbs,
        title=args.title or f"nenya explorer: {args.latents}",
        lat=args.lat,
        lon=args.lon,
        xlabel=xlab,
        ylabel=ylab,
    )
    print(out)
    return 0

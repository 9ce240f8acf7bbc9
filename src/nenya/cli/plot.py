"""``nenya plot scatter|gallery|neighbours``: PNG pictures of a projection or of a query's neighbours."""

from __future__ import annotations

import argparse

from nenya._errors import NenyaError
from nenya.cli._latents import HELP_FORMAT, LATENTS_HELP, add_image_args


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``plot`` (scatter, gallery, neighbours) to the ``nenya`` parser."""
    p = sub.add_parser(
        "plot",
        help="PNG pictures: UMAP scatter, image gallery, neighbour strip",
        description="scatter/gallery read a table with coordinates (e.g. the output of `nenya umap`); "
        "neighbours reads a latents file (or --index).",
        formatter_class=HELP_FORMAT,
    )
    ps = p.add_subparsers(dest="plot", metavar="KIND", required=True)
    s = ps.add_parser("scatter", help="points of the UMAP plane coloured by a column", formatter_class=HELP_FORMAT)
    s.add_argument("table", help="a table with the coordinates (e.g. x_latents_umap.parquet)")
    s.add_argument("--color", help="column to colour by")
    _plot_common(s)
    s.set_defaults(func=cmd_plot_scatter)
    g = ps.add_parser("gallery", help="one image per occupied cell of the UMAP grid", formatter_class=HELP_FORMAT)
    g.add_argument("table", help="a table with the coordinates and partition/row or path columns")
    g.add_argument("--nxy", type=int, default=16, help="grid cells per axis")
    g.add_argument("--min-pts", type=int, default=1, help="fewest points for a cell to get an image")
    g.add_argument("--seed", type=int, default=0, help="seeds which point of a cell is drawn")
    _plot_common(g)
    add_image_args(g)
    g.set_defaults(func=cmd_plot_gallery)
    nb = ps.add_parser(
        "neighbours", aliases=["neighbors"], help="a query and its k nearest neighbours", formatter_class=HELP_FORMAT
    )
    nb.add_argument("latents", help=LATENTS_HELP)
    nb.add_argument("--id", required=True, help="the query id")
    nb.add_argument("-k", type=int, default=8, help="neighbours shown")
    nb.add_argument("--index", help="a .faiss index of the same latents (default: exact search)")
    nb.add_argument("--output", "-o", help="output PNG file or folder")
    add_image_args(nb)
    nb.set_defaults(func=cmd_plot_neighbours)


def _plot_common(p) -> None:
    p.add_argument("--x", default=None, help="x column (default: U0, US0 or PC0, whichever exists)")
    p.add_argument("--y", default=None, help="y column (default: U1, US1 or PC1)")
    p.add_argument("--output", "-o", help="output PNG file or folder")


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


def _lookup(df, args):
    from nenya.analysis import ImageLookup

    lookup = ImageLookup(df, images=args.images, image_root=args.image_root)
    if lookup.kind is None:
        raise NenyaError(
            "no images to show: give --images X_preproc.h5 (SST latents) or use latents with a 'path' column (photos)"
        )
    return lookup


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

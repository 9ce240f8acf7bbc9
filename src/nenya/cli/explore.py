"""``nenya explore``: the interactive HTML explorer of a latents file, one self-contained page."""

from __future__ import annotations

import argparse

from nenya.cli._latents import HELP_FORMAT, JOIN_HELP, add_image_args, add_latents_args, partitions


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``nenya explore`` to the ``nenya`` parser."""
    p = sub.add_parser(
        "explore",
        help="write an interactive HTML explorer (one self-contained file)",
        description="Linked projection (UMAP) and map views with box/lasso selection, filters, colour-by, "
        "hover images, nearest neighbours of a clicked point and CSV export of a selection, in one HTML "
        "file that works offline (Bokeh). Writes <name>_explorer.html.",
        formatter_class=HELP_FORMAT,
    )
    add_latents_args(p, output_help="output HTML file or folder")
    p.add_argument("--coords", help="a table with id and U0/U1 (from `nenya umap`); default: fit UMAP here")
    p.add_argument("--color", help="column coloured at first")
    p.add_argument("--join", action="append", default=[], metavar="TABLE", help=JOIN_HELP)
    p.add_argument("-k", type=int, default=10, help="neighbours listed per point")
    p.add_argument("--metric", default="l2", choices=["l2", "ip", "cosine"], help="neighbour metric")
    p.add_argument(
        "--max-points", type=int, default=250_000, help="beyond this, show (and export from) a stated random sample"
    )
    p.add_argument("--lat", help="latitude column of the map view (default: lat or latitude when present)")
    p.add_argument("--lon", help="longitude column of the map view (default: lon or longitude when present)")
    p.add_argument("--thumbs", type=int, default=2000, help="points with a thumbnail (spread over the plane)")
    p.add_argument("--ntrain", type=int, default=50_000, help="UMAP sample when there is no --coords")
    p.add_argument("--title", default=None, help="page title (default: nenya explorer: <latents>)")
    add_image_args(p)
    p.set_defaults(func=cmd_explore)


def cmd_explore(args: argparse.Namespace) -> int:
    """Write the self-contained HTML explorer (``<name>_explorer.html``); print its path."""
    from nenya.analysis import ImageLookup, open_latents, output_path, write_explorer
    from nenya.analysis.explorer import join_columns, plane_coordinates
    from nenya.pipeline.storage import redact

    with open_latents(args.latents, partitions=partitions(args)) as lat:
        vectors = lat.vectors()
        df = lat.metadata.copy()
        df.insert(0, "id", lat.ids)
    u0, u1, xlab, ylab = plane_coordinates(df, vectors, coords=args.coords, ntrain=args.ntrain)
    if not args.coords:
        df["U0"], df["U1"] = u0, u1
    df = join_columns(df, args.join)
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
        source=redact(args.latents),
    )
    print(out)
    return 0

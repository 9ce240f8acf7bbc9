"""``nenya outliers`` and ``nenya trends``: the questions Nenya's scientists ask of latents (what is
unusual; where and when a pattern occurs)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from nenya.cli._latents import HELP_FORMAT, LATENTS_HELP, add_image_args, partitions


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``outliers`` and ``trends`` to the ``nenya`` parser."""
    _add_outliers(sub)
    _add_trends(sub)


def _add_outliers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "outliers",
        help="what is unusual: a log-likelihood (normalizing flow, as Ulmo) or kNN score for every vector",
        description="Fit a normalizing flow on a random sample of the latents (or load one with --flow) and "
        "score every vector by log-likelihood, streamed; or score by the mean distance to the k nearest "
        "neighbours (--method knn). The lowest --fraction are the outliers. Writes outliers.parquet (id, "
        "score, rank, outlier, valid, metadata), record.json, flow.safetensors and pictures (histogram, "
        "the most unusual images, maps and months when the table has positions and dates) to --output.",
        formatter_class=HELP_FORMAT,
    )
    p.add_argument("latents", help=LATENTS_HELP)
    p.add_argument("--method", choices=("flow", "knn"), default="flow", help="flow: log-likelihood; knn: distance")
    p.add_argument("--fraction", type=float, default=0.001, help="the share of valid items called outliers")
    p.add_argument("--fit-sample", type=int, default=150_000, help="vectors the flow is fitted on (random)")
    p.add_argument("--epochs", type=int, default=30, help="most epochs of the flow's fit (it stops early)")
    p.add_argument("--flow", help="score with this saved flow (flow.safetensors of an earlier run) instead of fitting")
    p.add_argument("--force", action="store_true", help="score with a flow fitted on latents of another model")
    p.add_argument("-k", type=int, default=10, help="neighbours of the kNN score")
    p.add_argument("--seed", type=int, default=0, help="the sample and the fit's seed")
    p.add_argument("--partitions", default=None, help="HDF5 partitions to read, comma-separated (default: valid,train)")
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16", "auto"),
        default="fp32",
        help="the flow's scoring precision; auto: bf16 on CPUs with native bf16 (AVX512-BF16/AMX), else "
        "fp32. bf16 LLs are within a fraction of a nat of fp32: the same ranking but for items near the cut",
    )
    p.add_argument(
        "--fit-precision",
        choices=("fp32", "bf16", "auto"),
        default="auto",
        help="the flow's fit: auto is bf16 where native (2.4x faster than fp32 at 256-d, the same held-out LL)",
    )
    add_image_args(p)
    p.add_argument("--output", "-o", help="output folder (default: <latents stem>_outliers/ next to the input)")
    p.set_defaults(func=cmd_outliers)


def cmd_outliers(args: argparse.Namespace) -> int:
    from nenya.analysis.images import ImageLookup
    from nenya.analysis.latents import output_path
    from nenya.analysis.outliers import outliers, write_outliers

    r = outliers(
        args.latents, method=args.method, fraction=args.fraction, fit_sample=args.fit_sample, flow=args.flow,
        force=args.force, k=args.k, epochs=args.epochs, seed=args.seed, partitions=partitions(args),
        precision=args.precision, fit_precision=args.fit_precision,
    )  # fmt: skip
    images = None
    if args.images or args.image_root or "path" in r.table.columns:
        images = ImageLookup(r.table, images=args.images, image_root=args.image_root)
    folder = args.output or output_path(args.latents, "_outliers")
    paths = write_outliers(r, folder, images=images)
    rec = r.record
    print(f"{rec['outliers']:,} outliers of {rec['valid']:,} valid vectors (score <= {rec['threshold']:.4g}); "
          f"{rec['invalid']:,} invalid left out")  # fmt: skip
    if rec["method"] == "flow":
        print(f"flow: {rec['flow']['epochs']} epochs on {rec['flow']['sample']:,} vectors "
              f"({rec['flow'].get('precision', 'fp32')}, {rec['flow'].get('seconds', 0):.0f} s), "
              f"held-out mean log-likelihood {rec['flow']['heldout_ll']:.4f}")  # fmt: skip
    print(json.dumps({"outputs": [os.path.relpath(p) for p in paths]}))
    return 0


def _add_trends(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "trends",
        help="a region's share by month, year and place, with its seasonal cycle and trend",
        description="A region of a collection (a --where query on its table, a --polygon in UMAP coordinates, "
        "a --label, or the --ids of an explorer export) measured against the collection (or a --within "
        "subset): its share by month and year fitted with 11 month dummies plus a linear time term (Nenya's "
        "fit; also a binomial GLM), and on an equal-area grid. Writes monthly/seasonal/yearly/grid CSVs, "
        "summary.json and trends.png to --output.",
        formatter_class=HELP_FORMAT,
    )
    p.add_argument("table", help="a table with id and a date: nenya umap's output, a Parquet/CSV table, or latents")
    how = p.add_argument_group("the region (one of)")
    how.add_argument("--where", help='a pandas query on the table, e.g. "DT40 > 1 and U0 < 2"')
    how.add_argument("--polygon", help="x0,y0,x1,y1,x2,y2,... in the --xy columns (a lasso in the UMAP)")
    how.add_argument("--label", help="COLUMN=VALUE, e.g. kmeans=3")
    how.add_argument("--ids", help="a CSV whose first column holds the region's ids (an explorer export)")
    p.add_argument("--xy", default="U0,U1", help="the coordinate columns --polygon is in")
    p.add_argument("--within", help="a pandas query for what the region is measured against (e.g. a DT bin)")
    p.add_argument("--time", default="datetime", help="the date column")
    p.add_argument("--lat", help="latitude column (default: lat or latitude, when present)")
    p.add_argument("--lon", help="longitude column (default: lon or longitude, when present)")
    p.add_argument("--cell-deg", type=float, default=10.0, help="size of the equal-area grid's cells, degrees")
    p.add_argument("--min-count", type=int, default=20, help="items a month or a cell needs to be shown and fitted")
    p.add_argument("--output", "-o", default="trends", help="output folder")
    p.set_defaults(func=cmd_trends)


def _region(args, table):
    import pandas as pd

    from nenya.analysis.trends import region_mask

    polygon = label = ids = None
    if args.polygon:
        v = [float(s) for s in args.polygon.split(",") if s.strip()]
        if len(v) % 2:
            raise ValueError("--polygon takes pairs: x0,y0,x1,y1,...")
        polygon = list(zip(v[0::2], v[1::2]))
    if args.label:
        if "=" not in args.label:
            raise ValueError("--label takes COLUMN=VALUE")
        col, value = args.label.split("=", 1)
        label = (col.strip(), value.strip())
    if args.ids:
        ids = pd.read_csv(args.ids, usecols=[0], dtype=str, keep_default_na=False).iloc[:, 0].tolist()
    xy = tuple(s.strip() for s in args.xy.split(","))
    if len(xy) != 2:
        raise ValueError("--xy takes two column names: X,Y")
    return region_mask(table, where=args.where, polygon=polygon, xy=xy, label=label, ids=ids)


def cmd_trends(args: argparse.Namespace) -> int:
    from nenya.analysis.explorer.data import find_lat_lon
    from nenya.analysis.latents import read_table
    from nenya.analysis.trends import trends, write_trends

    table = read_table(args.table)
    mask, description = _region(args, table)
    r = trends(
        table,
        mask,
        within=args.within,
        time=args.time,
        latlon=find_lat_lon(table, args.lat, args.lon),
        cell_deg=args.cell_deg,
        min_count=args.min_count,
        description=description,
    )
    paths = write_trends(r, args.output)
    print(f"{description}: {r.k:,} of {r.n:,} items ({r.k / r.n:.2%}) of {r.within}")
    if r.fit is not None:
        ols, glm = r.fit["ols"], r.fit["glm"]
        print(
            f"trend {ols['slope_per_decade']:+.5f} ± {ols['se']:.5f} per decade (p = {ols['p']:.3g}; "
            f"binomial GLM: odds x{glm['odds_ratio_per_decade']:.3f} per decade, p = {glm['p']:.3g}); "
            f"seasonal amplitude {ols['seasonal_amplitude']:.5f}; {r.fit['months_used']} months fitted"
        )
    for note in r.notes:
        print(f"note: {note}", file=sys.stderr)
    print(json.dumps({"outputs": [os.path.relpath(p) for p in paths]}))
    return 0

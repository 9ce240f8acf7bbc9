"""``nenya serve``: the explorer over a whole collection, live, with query by image.

A Bokeh server application on 127.0.0.1 by default: the explorer's linked projection and map views,
filters, colour, selection panel and ``window.nenya`` API, computed on the server over every point
(the views draw a viewport sample over a density image); thumbnails read on demand; an uploaded
cutout or photo encoded with the model the latents record, its nearest neighbours found with FAISS
and its place on the projection shown. See ``docs/explore.md`` ("serve").
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from nenya.analysis.serve.collection import Collection, Placement
from nenya.analysis.serve.server import is_loopback, make_server, run_server
from nenya.analysis.serve.state import ServeOptions, ServeState

log = logging.getLogger(__name__)

__all__ = [
    "Collection",
    "Placement",
    "ServeOptions",
    "ServeState",
    "open_collection",
    "query_encoder_for",
    "make_server",
    "run_server",
    "is_loopback",
]


def open_collection(
    latents: str,
    *,
    coords: str | None = None,
    images: str | None = None,
    image_root: str | None = None,
    index: str | None = None,
    umap_model: str | None = None,
    metric: str = "l2",
    lat: str | None = None,
    lon: str | None = None,
    partitions: Sequence[str] | None = None,
    ntrain: int = 50_000,
    join: Sequence[str] = (),
) -> Collection:
    """Read a latents file (any layout nenya writes) into a servable :class:`Collection`.

    Args:
        latents: the latents file.
        coords: a table with ``id`` and U0/U1 (``nenya umap``) or PC0/PC1; default: fit UMAP here.
        images: the preproc HDF5 file of SST cutouts; image_root: the folder of relative photo paths.
        index: a ``nenya index`` output (``X.faiss``) to search; default: an exact index built here.
        umap_model: a UMAP that nenya pickled (in the UMAP dir, see :mod:`nenya.nenya_umap`); its
            ``transform`` places queries. Default: a query lands at the mean of its neighbours.
        metric: ``l2``, ``ip`` or ``cosine`` for the index built here.
        lat, lon: the map's columns; partitions: HDF5 partitions to read.
        join: tables whose columns are added by id (``--join``: e.g. ``nenya outliers``' scores).
    """
    from nenya._errors import NenyaError
    from nenya.analysis import ImageLookup, build_index, load_index, open_latents, read_about
    from nenya.analysis.explorer import join_columns, plane_coordinates

    with open_latents(latents, partitions=partitions) as lat_file:
        vectors = lat_file.vectors()
        table = lat_file.metadata.copy()
        table.insert(0, "id", [str(i) for i in lat_file.ids])
    x, y, xlabel, ylabel = plane_coordinates(table, vectors, coords=coords, ntrain=ntrain)
    table = join_columns(table, list(join))
    if index is not None:
        idx = load_index(index)
        if idx.n != len(table) or not (idx.ids.astype(str) == table["id"].to_numpy(dtype=str)).all():
            raise NenyaError(f"{index} does not index {latents} row for row; rebuild it with `nenya index {latents}`")
    else:
        idx = build_index(vectors, kind="flat", metric=metric, ids=table["id"].to_numpy())
    idx.about = idx.about or read_about(latents)
    del vectors  # the index holds its own copy
    lookup = None
    if images or "path" in table.columns:
        lookup = ImageLookup(table, images=images, image_root=image_root)
    reducer = None
    if umap_model is not None:
        from nenya.analysis.umap_files import load_umap

        reducer = load_umap(umap_model)
    return Collection(x, y, table, idx, images=lookup, reducer=reducer, lat=lat, lon=lon, xlabel=xlabel, ylabel=ylabel)


def query_encoder_for(
    collection: Collection,
    *,
    model: str | None = None,
    opts: str | None = None,
    trust_checkpoint: bool = False,
) -> tuple[Any, str]:
    """``(factory, reason)``: a callable that builds the query encoder (the latents' recorded model,
    or ``model``), or None and the reason queries by upload are off."""
    from nenya.analysis.query import QueryEncoder

    about = collection.index.about or {}
    if not model and not about.get("model"):
        return None, "these latents do not record their model: start with --model SPEC to query by image"

    def build() -> QueryEncoder:
        return QueryEncoder.from_about(about, model=model, opts=opts, trust_checkpoint=trust_checkpoint)

    return build, ""

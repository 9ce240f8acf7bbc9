"""The explorer in a notebook (``nenya.explore``): the third host of the one explorer.

The document is the page's (``page.build_document``: the points in the ``nenya-points`` source, the
``nenya-filter``, the side panel) shown through ``jupyter_bokeh``'s ``BokehModel``, an ipywidget that
keeps the Bokeh models in the kernel and in the browser in step both ways, without a server. The
browser computes as the offline page does (``page_host.js`` over the points the document holds, and
the shared ``nenya.js``): both scripts, with the script's data, are one ``CustomJS`` the document runs
when it is ready, so the notebook page gets the same ``window.nenya``.

Python reads what the page does through the synced models: the selection is the points' source's
``selected.indices`` (a lasso drawn with the mouse comes back to the kernel), restricted to the
points the ``nenya-filter`` shows. Python's own calls set the same models (so they work without a
browser too, e.g. under nbclient) and ask the page to run the same call of its API (through a source
nothing draws, ``nenya-requests``), so the widgets and panels follow. Beyond ``max_points`` a stated
random sample is shown, as in the page; ``.selection`` covers those points.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

__all__ = ["Explorer", "explore"]


def explore(
    latents: Any,
    *,
    coords: str | None = None,
    images: str | None = None,
    image_root: str | None = None,
    partitions: Sequence[str] | None = None,
    join: Sequence[str] = (),
    color: str | None = None,
    k: int = 10,
    metric: str = "l2",
    max_points: int | None = None,
    thumbs: int | None = None,
    lat: str | None = None,
    lon: str | None = None,
    ntrain: int = 50_000,
    title: str | None = None,
    seed: int = 0,
) -> Explorer:
    """The explorer of ``latents`` shown in a notebook (display the returned object), with the selection
    and the filters in Python.

    Args:
        latents: a latents file (as ``nenya explore`` reads it), or ``(ids, vectors, table)`` in memory
            (``table``: one row per id, its metadata; may be None), or a DataFrame with ``id`` and
            U0/U1 (or US0/US1, PC0/PC1) and metadata (no vectors: no neighbour lists).
        coords: a table with id and U0/U1 (``nenya umap``'s); default: a UMAP fitted here (without
            coordinates in ``latents``).
        images, image_root: where thumbnails come from (as ``nenya explore --images``).
        partitions: HDF5 partitions to read; join: tables whose columns are added by id.
        color, k, metric, lat, lon, ntrain, title, seed: as ``nenya explore``'s options.
        max_points: beyond this (default 250,000, the page's), a stated random sample is shown.
        thumbs: points with a thumbnail (default 2,000).
    """
    from nenya.analysis.explorer import MAX_POINTS, MAX_THUMBS, join_columns, plane_coordinates

    table, vectors, xy, labels, name = _read(latents, partitions)
    if xy is None:
        u0, u1, xl, yl = plane_coordinates(table, vectors, coords=coords, ntrain=ntrain)
        if not coords:
            table["U0"], table["U1"] = u0, u1
        xy, labels = (np.asarray(u0), np.asarray(u1)), (xl, yl)
    table = join_columns(table, list(join))
    lookup = None
    if images or "path" in table.columns:
        from nenya.analysis.images import ImageLookup

        lookup = ImageLookup(table, images=images, image_root=image_root)
    return Explorer(
        xy[0], xy[1], table, vectors=vectors, images=lookup, color=color, k=k, metric=metric,
        max_points=MAX_POINTS if max_points is None else max_points,
        max_thumbs=MAX_THUMBS if thumbs is None else thumbs,
        title=title or f"nenya explorer: {name}", seed=seed, lat=lat, lon=lon, xlabel=labels[0], ylabel=labels[1],
        source=name if isinstance(latents, (str, os.PathLike)) else None,
    )  # fmt: skip


def _read(latents: Any, partitions: Sequence[str] | None):
    """(table with ``id``, vectors or None, (x, y) or None, axis names, a name for the title)."""
    from nenya.analysis.explorer import PLANE_COLUMNS

    if isinstance(latents, (str, os.PathLike)):
        from nenya.analysis import open_latents
        from nenya.pipeline.storage import redact

        with open_latents(latents, partitions=partitions) as lat:
            vectors = lat.vectors()
            table = lat.metadata.copy()
            table.insert(0, "id", lat.ids)
        return table, vectors, None, ("U0", "U1"), redact(str(latents))
    if isinstance(latents, pd.DataFrame):
        table = latents.reset_index(drop=True)
        pair = next(((a, b) for a, b in PLANE_COLUMNS if a in table.columns and b in table.columns), None)
        if pair is None or "id" not in table.columns:
            raise ValueError("a DataFrame needs an id column and U0/U1, US0/US1 or PC0/PC1")
        xy = tuple(pd.to_numeric(table[c]).to_numpy(np.float64) for c in pair)
        return table, None, xy, pair, "a table"
    ids, vectors, meta = latents
    table = pd.DataFrame({"id": [str(i) for i in ids]})
    if meta is not None:
        meta = pd.DataFrame(meta).reset_index(drop=True)
        table = pd.concat([table, meta.drop(columns=["id"], errors="ignore")], axis=1)
    return table, np.asarray(vectors, np.float32), None, ("U0", "U1"), "vectors"


def _script(sdata: dict) -> str:
    """The browser's part: the page's host and the shared script, with the script's data."""
    from nenya.analysis.explorer.layout import nenya_js

    host = resources.files("nenya.analysis.explorer").joinpath("page_host.js").read_text(encoding="utf-8")
    data = json.dumps(json.dumps(sdata, ensure_ascii=True, separators=(",", ":"), allow_nan=False))
    embed = f"window.nenyaEmbed = {{ data: JSON.parse({data}), document: points.document }};\n"
    return embed + nenya_js(host)


# the page runs a call of its API that Python asked for (a change of the requests' source)
REQUEST_JS = """
const d = cb_obj.data, api = window.nenya;
if (!d.op || !d.op.length || !api) return;
const run = () => api[d.op[0]](...JSON.parse(d.args[0])).catch((e) => console.warn("nenya:", e));
if (api.ready) run(); else setTimeout(() => (window.nenya.ready ? run() : null), 500);
"""


def _in_polygon(px: np.ndarray, py: np.ndarray, poly: Sequence[Sequence[float]]) -> np.ndarray:
    """Point in polygon (even-odd rule), the rule of the page's ``select``."""
    hit = np.zeros(len(px), bool)
    j = len(poly) - 1
    for i in range(len(poly)):
        xi, yi = map(float, poly[i])
        xj, yj = map(float, poly[j])
        cross = (yi > py) != (yj > py)
        with np.errstate(divide="ignore", invalid="ignore"):
            hit ^= cross & (px < (xj - xi) * (py - yi) / (yj - yi) + xi)
        j = i
    return hit


def _ms(v: Any) -> float:
    """A filter bound as the page reads it: a number, or a date as milliseconds since 1970 (UTC unless it says)."""
    if isinstance(v, (int, float, np.number)):
        return float(v)
    try:
        return float(v)
    except (TypeError, ValueError):
        t = pd.Timestamp(v)
        return float((t.tz_localize("UTC") if t.tzinfo is None else t).value / 1e6)


class Explorer:
    """The explorer shown in a notebook (see :func:`explore`); display it (the last line of a cell)."""

    def __init__(self, x, y, table: pd.DataFrame, **kw: Any) -> None:
        from nenya.analysis.explorer import MAX_POINTS
        from nenya.analysis.explorer.page import build_document

        data, shown, tab = _page_data(np.asarray(x), np.asarray(y), table, **kw)
        self.note = data.note
        self.shown = shown  #: the rows of the table shown (all, or the sample)
        self._table = tab
        self._cols = data.columns
        self._ids = pd.Index([str(i) for i in tab["id"]])
        self._xy = {"projection": (data.x.astype(np.float64), data.y.astype(np.float64))}
        if data.lonlat is not None:
            self._xy["map"] = data.lonlat
        self._filters: dict[str, Any] = {}
        self._callbacks: list[Callable[[pd.DataFrame], Any]] = []
        self._last: tuple | None = None
        self._n_req = 0
        if len(shown) < len(table):
            warnings.warn(
                f"nenya.explore: {self.note}; beyond {kw.get('max_points', MAX_POINTS):,} points the notebook shows "
                "a random sample (`nenya serve` shows every point)",
                stacklevel=3,
            )
        self._roots, sdata = build_document(data)
        self._build(sdata)
        self._widget = None

    def _build(self, sdata: dict) -> None:
        from bokeh.document import Document
        from bokeh.models import ColumnDataSource, CustomJS

        doc = Document()
        for r in self._roots:
            doc.add_root(r)
        self._doc = doc
        self._source = doc.select_one({"name": "nenya-points"})
        self._filter = doc.select_one({"name": "nenya-filter"})
        self._requests = ColumnDataSource({"n": [], "op": [], "args": []}, name="nenya-requests")
        self._requests.js_on_change("data", CustomJS(code=REQUEST_JS))
        doc.add_root(self._requests)
        doc.js_on_event("document_ready", CustomJS(args={"points": self._source}, code=_script(sdata)))
        self._source.selected.on_change("indices", self._selected)

    # -- display ----------------------------------------------------------------------------------
    @property
    def widget(self):
        """The ``jupyter_bokeh`` widget that shows the explorer (made once)."""
        if self._widget is None:
            from jupyter_bokeh import BokehModel

            self._widget = BokehModel(self._roots[0])
        return self._widget

    def _ipython_display_(self) -> None:
        from bokeh.io import output_notebook
        from bokeh.resources import INLINE
        from IPython.display import display

        output_notebook(INLINE, hide_banner=True)  # BokehJS in the notebook page, inline (nothing fetched)
        display(self.widget)

    def __repr__(self) -> str:
        return f"<nenya explorer: {self.note}; {len(self.selected_rows())} selected>"

    # -- the selection --------------------------------------------------------------------------------
    def shown_mask(self) -> np.ndarray:
        """Which of the points are shown now (the filters')."""
        return np.asarray(self._filter.booleans, dtype=bool)

    def selected_rows(self) -> np.ndarray:
        """The selected points shown (rows of :attr:`table`), sorted."""
        rows = np.unique(np.asarray(self._source.selected.indices, dtype=np.int64))
        return rows[self.shown_mask()[rows]]

    @property
    def table(self) -> pd.DataFrame:
        """Every point shown in the explorer: id and metadata."""
        return self._table

    @property
    def selection(self) -> pd.DataFrame:
        """What is selected now (and shown): id and metadata, one row per point."""
        return self._table.iloc[self.selected_rows()].reset_index(drop=True)

    def select(self, ids_or_view: Any, polygon: Sequence[Sequence[float]] | None = None) -> int:
        """Select points: ``select(ids)`` by id, or ``select(view, polygon)`` inside a polygon of a view's
        data coordinates (``"projection"`` or ``"map"``: longitude, latitude). Only points shown are
        selected; returns how many."""
        mask = self.shown_mask()
        if polygon is None:
            ids = [ids_or_view] if isinstance(ids_or_view, str) else ids_or_view
            rows = np.flatnonzero(self._ids.isin([str(i) for i in ids]) & mask)
        else:
            if ids_or_view not in self._xy:
                raise ValueError(f"unknown view {ids_or_view}; views: {', '.join(self._xy)}")
            px, py = self._xy[ids_or_view]
            rows = np.flatnonzero(_in_polygon(px, py, polygon) & mask)
        self._source.selected.indices = [int(r) for r in rows]
        return len(rows)

    def clear(self) -> None:
        """Select nothing."""
        self._source.selected.indices = []

    def on_select(self, callback: Callable[[pd.DataFrame], Any]) -> None:
        """Call ``callback(selection)`` whenever the selection changes (in the page or from Python)."""
        self._callbacks.append(callback)

    def _selected(self, attr: str, old: Any, new: Any) -> None:
        rows = tuple(self.selected_rows().tolist())
        if rows == self._last:  # the widget may report one change twice
            return
        self._last = rows
        for cb in self._callbacks:
            cb(self.selection)

    # -- filters ------------------------------------------------------------------------------------
    def set_filter(self, column: str, spec: Any = None) -> int:
        """Show only the points whose ``column`` is among ``spec`` (a category: a list of values) or in
        ``spec = [lo, hi]`` (numbers or dates, both ends included, None for no bound); ``spec=None``
        removes the column's filter. The page's filter does the same; returns how many are shown."""
        c = next((c for c in self._cols if c.name == column), None)
        if c is None or not c.filters:
            names = ", ".join(c.name for c in self._cols if c.filters)
            raise ValueError(f"no filter for column {column}; columns: {names}")
        if spec is None:
            self._filters.pop(column, None)
        elif c.kind == "cat":
            self._filters[column] = [str(v) for v in spec]
        else:
            lo, hi = spec
            self._filters[column] = [-np.inf if lo is None else _ms(lo), np.inf if hi is None else _ms(hi)]
        return self._apply("setFilter", [column, None if spec is None else _jsonable(spec)])

    def clear_filters(self) -> int:
        """Show every point."""
        self._filters.clear()
        return self._apply("clearFilters", [])

    def _apply(self, op: str, args: list) -> int:
        mask = np.ones(len(self._ids), bool)
        for c in self._cols:
            f = self._filters.get(c.name)
            if f is None:
                continue
            if c.kind == "cat":
                mask &= np.isin(np.asarray(c.values, dtype=object), f)
            else:
                v = np.asarray(c.values, np.float64)
                with np.errstate(invalid="ignore"):
                    mask &= (v >= f[0]) & (v <= f[1])
        self._filter.booleans = mask.tolist()
        kept = [int(r) for r in self._source.selected.indices if mask[r]]
        if len(kept) != len(self._source.selected.indices):
            self._source.selected.indices = kept
        self._n_req += 1
        self._requests.data = {"n": [self._n_req], "op": [op], "args": [json.dumps(args)]}
        return int(mask.sum())


def _jsonable(spec: Any) -> Any:
    """A filter's spec as the page's API takes it (dates as ISO text)."""
    if isinstance(spec, (list, tuple)):
        return [_jsonable(v) for v in spec]
    if isinstance(spec, (pd.Timestamp, np.datetime64)):
        return pd.Timestamp(spec).isoformat()
    if isinstance(spec, np.generic):
        return spec.item()
    return spec


def _page_data(x: np.ndarray, y: np.ndarray, table: pd.DataFrame, **kw: Any):
    """What the page would show (``write_explorer``'s steps): the PageData, the rows shown, their table."""
    from nenya.analysis.dtbins import DT_bins
    from nenya.analysis.explorer import _check_inputs, _lonlat, _neighbours, _sample, with_dt
    from nenya.analysis.explorer.coastlines import coastlines
    from nenya.analysis.explorer.data import columns, dt_column, find_lat_lon, first_colour, thumbnails
    from nenya.analysis.explorer.page import PageData

    vectors, images = kw.get("vectors"), kw.get("images")
    x, y = np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.float32)
    _check_inputs(len(x), table, vectors)
    latlon = find_lat_lon(table, kw.get("lat"), kw.get("lon"))
    seed = kw.get("seed", 0)
    shown, note = _sample(len(x), kw["max_points"], seed)
    x, y = x[shown], y[shown]
    tab = with_dt(table.iloc[shown].reset_index(drop=True))
    cols = columns(tab)
    nbr, nsc = _neighbours(vectors, shown, kw.get("k", 10), kw.get("metric", "l2"))
    thumbs: list[str] = []
    trows = np.zeros(0, np.int64)
    if images is not None and images.kind is not None and kw["max_thumbs"] > 0:
        thumbs, trows = thumbnails(x, y, shown, images, kw["max_thumbs"], seed)
        note += f"; images for {len(trows):,}"
    lonlat = _lonlat(tab, latlon)
    data = PageData(
        title=kw.get("title", "nenya explorer"), note=note, x=x, y=y, xlabel=kw.get("xlabel", "U0"),
        ylabel=kw.get("ylabel", "U1"), ids=[str(i) for i in tab["id"].tolist()], columns=cols,
        colour=first_colour(cols, kw.get("color")), lonlat=lonlat, coast=coastlines() if lonlat is not None else None,
        nbr=nbr, nbr_score=nsc, metric=kw.get("metric", "l2"), thumbs=thumbs, thumb_rows=trows,
        dt_column=dt_column(cols), dt_bins=DT_bins, source=kw.get("source"),
    )  # fmt: skip
    arrays = [c for c in tab.columns if len(tab) and isinstance(tab[c].iloc[0], (list, tuple, np.ndarray))]
    return data, shown, tab.drop(columns=arrays)

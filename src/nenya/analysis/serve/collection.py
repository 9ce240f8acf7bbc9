"""The whole collection on the server: every point's coordinates and columns, and the computations
``nenya serve`` answers over all of them (filters, lasso and box selections, viewport samples and
density, exports, neighbours, thumbnails, placement of a query). Plain numpy/pandas, no Bokeh.

Filters follow the explorer page's rules exactly (a range keeps ``lo <= v <= hi``, NaN never passes;
a pick list keeps the listed values), so a served page and a written page agree.
"""

from __future__ import annotations

import io
import logging
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from nenya.analysis.explorer import with_dt
from nenya.analysis.explorer.data import MISSING, Column, columns, find_lat_lon
from nenya.analysis.explorer.stats import Binned, stats_spec
from nenya.analysis.images import Images, anomaly_rgb
from nenya.analysis.search import LatentIndex

log = logging.getLogger(__name__)

__all__ = ["Collection", "Placement", "FORMULA_START"]

#: a text cell starting with one of these is prefixed with ' in exports (a spreadsheet must not run it)
FORMULA_START = ("=", "+", "@", "\t", "\r")
THUMB_CACHE = 4096


@dataclass
class Placement:
    """Where a query lands on the projection, and how that was decided."""

    x: float
    y: float
    method: str  # "umap-transform", "neighbours-mean" or "stored"


@dataclass
class Collection:
    """Every point of a served collection.

    Args:
        x, y: projection coordinates (one per point).
        table: ``id`` and the metadata columns (one row per point).
        index: the FAISS index of the points' vectors, its rows in table order.
        images: thumbnails of rows (None: no thumbnails).
        reducer: a fitted UMAP whose ``transform`` places queries (None: neighbours' mean).
        lat, lon: the map's columns (default: lat/lon or latitude/longitude when present).
    """

    x: np.ndarray
    y: np.ndarray
    table: pd.DataFrame
    index: LatentIndex
    images: Images | None = None
    reducer: Any = None
    lat: str | None = None
    lon: str | None = None
    xlabel: str = "U0"
    ylabel: str = "U1"
    seed: int = 0
    columns: list[Column] = field(init=False)
    values: dict[str, np.ndarray] = field(init=False)
    lonlat: tuple[np.ndarray, np.ndarray] | None = field(init=False)
    binned: Binned = field(init=False)

    def __post_init__(self) -> None:
        n = len(self.x)
        if len(self.y) != n or len(self.table) != n or self.index.n != n:
            raise ValueError(
                f"x, y, table and index must have one entry per point; got {n}, {len(self.y)}, "
                f"{len(self.table)}, {self.index.n}"
            )
        if "id" not in self.table.columns:
            raise ValueError("the table needs an 'id' column")
        self.x = np.asarray(self.x, dtype=np.float64)
        self.y = np.asarray(self.y, dtype=np.float64)
        self.table = with_dt(self.table.reset_index(drop=True))
        self.ids = self.table["id"].astype(str).to_numpy()
        self._id_index = pd.Index(self.ids)
        latlon = find_lat_lon(self.table, self.lat, self.lon)
        self.lonlat = None
        if latlon is not None:
            la, lo = latlon
            self.lonlat = (
                pd.to_numeric(self.table[lo], errors="coerce").to_numpy(dtype=np.float64),
                pd.to_numeric(self.table[la], errors="coerce").to_numpy(dtype=np.float64),
            )
        self.columns = columns(self.table)
        self.values = {}
        for c in self.columns:  # cat columns as codes into their levels: small, and fast to filter
            if c.kind == "cat":
                codes = pd.Categorical(np.asarray(c.values, dtype=object), categories=c.levels).codes
                self.values[c.name] = codes.astype(np.int32)
                c.values = []
            else:
                self.values[c.name] = np.asarray(c.values, dtype=np.float64)
        by_field = {f"c{i}": self.values[c.name] for i, c in enumerate(self.columns)}
        lat = None if self.lonlat is None else self.lonlat[1]
        self.binned = Binned(stats_spec(self.columns, lat), by_field, lat)  # the charts' bins, built on first use
        # a fixed random priority per point: a viewport shows its highest-priority points, so panning
        # and zooming never reshuffle which points are drawn
        self.priority = np.random.default_rng(self.seed).permutation(n).astype(np.int32)
        self._thumbs: OrderedDict[int, bytes | None] = OrderedDict()
        self._thumb_lock = threading.Lock()  # thumbnails are read in the server's worker threads

    # -- basics ---------------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return len(self.x)

    @property
    def views(self) -> list[str]:
        return ["projection", "map"] if self.lonlat is not None else ["projection"]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"no column {name!r}; columns: {', '.join(c.name for c in self.columns)}")

    def xy(self, view: str) -> tuple[np.ndarray, np.ndarray]:
        """The coordinates of every point in a view."""
        if view == "projection":
            return self.x, self.y
        if view == "map" and self.lonlat is not None:
            return self.lonlat
        raise ValueError(f"unknown view {view!r}; views: {', '.join(self.views)}")

    def row_of(self, id_: str) -> int | None:
        """The row of an id, or None (ids are looked up, never used as paths)."""
        loc = self._id_index.get_indexer([str(id_)])[0]
        return None if loc < 0 else int(loc)

    def cell(self, name: str, rows: np.ndarray) -> list:
        """Display values of a column at ``rows`` (levels for categories, ISO text for dates)."""
        c = self.column(name)
        v = self.values[name][rows]
        if c.kind == "cat":
            levels = np.asarray(c.levels, dtype=object)
            return [levels[i] if i >= 0 else MISSING for i in v]
        if c.kind == "date":
            return [pd.Timestamp(int(t), unit="ms", tz="UTC").isoformat() if math.isfinite(t) else "" for t in v]
        return [float(t) for t in v]

    # -- filters and selections -------------------------------------------------------------------
    def mask(self, filters: dict[str, dict]) -> np.ndarray:
        """The points every filter keeps. A filter is ``{"values": [...]}`` (categories) or
        ``{"range": [lo, hi], "left_open": bool}`` (numbers and dates, in milliseconds)."""
        keep = np.ones(self.n, dtype=bool)
        for name, f in filters.items():
            c = self.column(name)
            v = self.values[name]
            if "values" in f:
                wanted = [c.levels.index(s) for s in f["values"] if s in c.levels]
                keep &= np.isin(v, np.asarray(wanted, dtype=np.int32))
            else:
                lo, hi = f["range"]
                with np.errstate(invalid="ignore"):
                    keep &= (v > lo if f.get("left_open") else v >= lo) & (v <= hi)
        return keep

    def normalise_filter(self, name: str, spec: Any, *, left_open: bool = False) -> dict:
        """A filter from the API's form (a list of values, or ``[min, max]`` with None open and dates as
        text or milliseconds); a ValueError that says what to give."""
        try:
            c = self.column(name)
        except KeyError:
            c = None
        if c is None or not c.filters:
            names = ", ".join(c.name for c in self.columns if c.filters)
            raise ValueError(f"no filter for column {name}; columns: {names}")
        if c.kind == "cat":
            if not isinstance(spec, list):
                raise ValueError(f"filter on {name}: give a list of values")
            return {"values": [str(s) for s in spec]}
        if not isinstance(spec, list) or len(spec) != 2:
            raise ValueError(f"filter on {name}: give [min, max]")
        lo = -math.inf if spec[0] is None else _number(spec[0], name)
        hi = math.inf if spec[1] is None else _number(spec[1], name)
        return {"range": [lo, hi], "left_open": bool(left_open)}

    def in_polygon(self, view: str, xs: list[float], ys: list[float], keep: np.ndarray) -> np.ndarray:
        """Rows (sorted) of the kept points inside the polygon (a lasso, or a box's four corners)."""
        from matplotlib.path import Path

        px, py = self.xy(view)
        poly = np.column_stack([np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)])
        if len(poly) < 3 or not np.isfinite(poly).all():
            raise ValueError("a selection polygon needs at least three finite vertices")
        with np.errstate(invalid="ignore"):
            box = (
                keep
                & (px >= poly[:, 0].min())
                & (px <= poly[:, 0].max())
                & (py >= poly[:, 1].min())
                & (py <= poly[:, 1].max())
            )
        cand = np.flatnonzero(box)
        inside = Path(poly).contains_points(np.column_stack([px[cand], py[cand]]))
        return cand[inside]

    def in_rect(self, view: str, x0: float, x1: float, y0: float, y1: float, keep: np.ndarray) -> np.ndarray:
        """Rows (sorted) of the kept points in a box (edges included)."""
        px, py = self.xy(view)
        xa, xb = sorted((float(x0), float(x1)))
        ya, yb = sorted((float(y0), float(y1)))
        with np.errstate(invalid="ignore"):
            return np.flatnonzero(keep & (px >= xa) & (px <= xb) & (py >= ya) & (py <= yb))

    def sample(self, rows: np.ndarray, limit: int) -> np.ndarray:
        """Up to ``limit`` of ``rows``: those of highest fixed priority (sorted by row)."""
        if len(rows) <= limit:
            return rows
        pick = np.argpartition(self.priority[rows], limit)[:limit]
        return np.sort(rows[pick])

    def density(
        self, view: str, x0: float, x1: float, y0: float, y1: float, keep: np.ndarray, bins: tuple[int, int]
    ) -> np.ndarray:
        """Counts of the kept points on a ``bins`` = (nx, ny) grid over the box, shape (ny, nx)."""
        nx, ny = bins
        rows = self.in_rect(view, x0, x1, y0, y1, keep)
        px, py = self.xy(view)
        wx = (float(x1) - float(x0)) or 1.0
        wy = (float(y1) - float(y0)) or 1.0
        ix = np.clip(((px[rows] - x0) / wx * nx).astype(np.int64), 0, nx - 1)
        iy = np.clip(((py[rows] - y0) / wy * ny).astype(np.int64), 0, ny - 1)
        return np.bincount(iy * nx + ix, minlength=nx * ny).reshape(ny, nx)

    # -- export -----------------------------------------------------------------------------------
    def export_columns(self) -> list[str]:
        return ["id"] + [c.name for c in self.columns]

    def write_csv(self, rows: np.ndarray, dest: str) -> int:
        """Write the rows' id and columns as CSV to ``dest`` (a local file); returns the row count.

        Text cells that a spreadsheet would run as a formula are prefixed with ``'``; missing values
        are empty cells. Written by Arrow's CSV writer (a few times faster than pandas')."""
        import pyarrow as pa
        import pyarrow.csv as pacsv

        out = self.table.iloc[np.asarray(rows, dtype=np.int64)][self.export_columns()].reset_index(drop=True)
        for name in out.columns:
            s = out[name]
            if s.dtype == object or pd.api.types.is_string_dtype(s):
                text = s.astype("string")
                out[name] = text.mask(text.str.startswith(FORMULA_START).fillna(False), "'" + text)
        table = pa.Table.from_pandas(out, preserve_index=False)
        pacsv.write_csv(table, dest, write_options=pacsv.WriteOptions(quoting_style="needed"))
        return len(out)

    # -- neighbours, queries, thumbnails ------------------------------------------------------------
    def neighbours_of_row(self, row: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, scores) of a stored point's ``k`` nearest other points."""
        vec = self.index.index.reconstruct(int(row))
        rows, scores = self.neighbours_of_vector(vec, k + 1)
        keep = rows != row
        return rows[keep][:k], scores[keep][:k]

    def neighbours_of_vector(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, scores) of the ``k`` nearest points to a vector."""
        _, scores, rows = self.index.search(np.asarray(vector, dtype=np.float32).reshape(1, -1), k)
        ok = rows[0] >= 0
        return rows[0][ok], scores[0][ok]

    def place(self, vector: np.ndarray, rows: np.ndarray) -> Placement:
        """Where a query lands: UMAP's ``transform`` when a fitted UMAP was given, else the mean
        position of its neighbours."""
        if self.reducer is not None:
            import warnings

            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*n_jobs value.*")
                emb = self.reducer.transform(np.asarray(vector, dtype=np.float32).reshape(1, -1))
            return Placement(float(emb[0, 0]), float(emb[0, 1]), "umap-transform")
        if not len(rows):
            return Placement(math.nan, math.nan, "neighbours-mean")
        return Placement(float(np.nanmean(self.x[rows])), float(np.nanmean(self.y[rows])), "neighbours-mean")

    def thumbnail(self, row: int) -> bytes | None:
        """A PNG of a row's image (None: no image), cached."""
        with self._thumb_lock:
            if row in self._thumbs:
                self._thumbs.move_to_end(row)
                return self._thumbs[row]
        png = None
        if self.images is not None and self.images.kind is not None:
            try:
                im = self.images.get([row])[0]
            except Exception as e:  # one unreadable image must not stop the server
                log.warning("cannot read the image of row %d: %s", row, e)
                im = None
            if im is not None:
                png = png_bytes(anomaly_rgb(im) if self.images.kind == "anomaly" else im)
        with self._thumb_lock:
            self._thumbs[row] = png
            if len(self._thumbs) > THUMB_CACHE:
                self._thumbs.popitem(last=False)
        return png


def png_bytes(rgb: np.ndarray) -> bytes:
    """A PNG of an RGB (or grey) uint8 image."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG")
    return buf.getvalue()


def _number(v: Any, name: str) -> float:
    """A number, or a date (text) as milliseconds since 1970 UTC."""
    if isinstance(v, bool):
        raise ValueError(f"filter on {name}: {v!r} is not a number or a date")
    if isinstance(v, (int, float)):
        return float(v)
    try:
        return float(v)
    except (TypeError, ValueError):
        pass
    try:
        t = pd.Timestamp(v)
    except (TypeError, ValueError):
        raise ValueError(f"filter on {name}: {v!r} is not a number or a date") from None
    t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    return (t - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(milliseconds=1)

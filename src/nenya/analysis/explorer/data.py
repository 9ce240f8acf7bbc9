"""What the explorer page shows: the sampled points, their columns (kinds for colour and filters),
neighbours in latent space and thumbnails. Plain numpy/pandas; the page is built in ``page.py``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from nenya.analysis.images import Images, anomaly_rgb, to_data_uri

MAX_LEVELS = 40  # a text column with more distinct values is not a category
FEW_INTEGERS = 20  # integer columns with at most this many values are categories
SKIP_COLUMNS = {"id", "path", "row", "vector", "tile_x", "tile_y", "pp_idx"}  # never colour or filter by these
MISSING = "(missing)"
LAT_LON_NAMES = (("lat", "lon"), ("latitude", "longitude"))


@dataclass
class Column:
    """One metadata column on the page.

    ``kind``: ``num`` (float64 values; range filter, colour scale), ``date`` (milliseconds since
    1970 UTC; date-range filter), ``cat`` (strings; pick list, colour per level) or ``text``
    (strings shown in the table and exported, but neither filtered nor coloured).
    """

    name: str
    kind: str
    values: np.ndarray | list[str]
    levels: list[str] = field(default_factory=list)
    lo: float | None = None
    hi: float | None = None
    filterable: bool = True
    quoted: bool = True  # a category's levels are text in a pandas query (False: numbers or booleans)

    @property
    def filters(self) -> bool:
        """Whether the page offers a filter on this column."""
        return self.filterable and self.kind != "text"

    def spec(self, field_name: str) -> dict:
        """The JSON the page's script reads."""
        return {
            "name": self.name,
            "field": field_name,
            "kind": self.kind,
            "levels": self.levels,
            "lo": self.lo,
            "hi": self.hi,
            "filter": self.filters,
            "quoted": self.quoted,
        }


def _as_dates(s: pd.Series) -> np.ndarray | None:
    """Milliseconds since 1970 (float64, NaN for missing) when every present value is a date, else None."""
    if pd.api.types.is_datetime64_any_dtype(s):
        t = pd.to_datetime(s, utc=True)
    else:
        present = s.dropna()
        if not len(present):
            return None
        try:
            t = pd.to_datetime(s, errors="raise", utc=True, format="mixed")
        except (ValueError, TypeError, OverflowError):
            return None
    epoch = pd.Timestamp(0, tz="UTC")
    return ((t - epoch) / pd.Timedelta(milliseconds=1)).to_numpy(dtype=np.float64, na_value=np.nan)


def _strings(s: pd.Series) -> list[str]:
    return [MISSING if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in s.tolist()]


def column(name: str, s: pd.Series) -> Column | None:
    """The page's view of one table column, or None for columns it cannot show (arrays, vectors)."""
    if len(s) and isinstance(s.iloc[0], (list, tuple, np.ndarray)):
        return None
    filterable = name not in SKIP_COLUMNS
    if pd.api.types.is_bool_dtype(s):
        values = _strings(s)
        return Column(name, "cat", values, sorted(set(values)), filterable=filterable, quoted=False)
    if pd.api.types.is_datetime64_any_dtype(s):
        ms = _as_dates(s)
        assert ms is not None
        return Column(name, "date", ms, lo=_nanmin(ms), hi=_nanmax(ms), filterable=filterable)
    if pd.api.types.is_numeric_dtype(s):
        if pd.api.types.is_integer_dtype(s) and s.nunique() <= FEW_INTEGERS:
            values = [str(v) for v in s.tolist()]
            levels = sorted(set(values), key=_num_key)
            return Column(name, "cat", values, levels, filterable=filterable, quoted=False)
        v = s.to_numpy(dtype=np.float64)
        return Column(name, "num", v, lo=_nanmin(v), hi=_nanmax(v), filterable=filterable)
    values = _strings(s)
    levels = sorted(set(values))
    if len(levels) <= MAX_LEVELS:
        return Column(name, "cat", values, levels, filterable=filterable)
    ms = _as_dates(s)
    if ms is not None:
        return Column(name, "date", ms, lo=_nanmin(ms), hi=_nanmax(ms), filterable=filterable)
    return Column(name, "text", values, filterable=False)


def _num_key(v: str) -> float:
    try:
        return float(v)
    except ValueError:
        return math.inf


def _nanmin(v: np.ndarray) -> float | None:
    finite = v[np.isfinite(v)]
    return float(finite.min()) if len(finite) else None


def _nanmax(v: np.ndarray) -> float | None:
    finite = v[np.isfinite(v)]
    return float(finite.max()) if len(finite) else None


def columns(table: pd.DataFrame) -> list[Column]:
    """Every showable column of ``table`` except ``id``, in table order."""
    out = []
    for c in table.columns:
        if c == "id":
            continue
        col = column(str(c), table[c])
        if col is not None:
            out.append(col)
    return out


def first_colour(cols: list[Column], color: str | None) -> str | None:
    """The column coloured at first: ``color`` (checked), else the first category with more than one
    level, else the first number."""
    usable = [c.name for c in cols if c.kind != "text"]
    if color is not None:
        if color not in usable:
            raise ValueError(f"cannot colour by {color!r}; columns: {', '.join(usable) or 'none'}")
        return color
    cats = [c.name for c in cols if c.kind == "cat" and c.filterable and len(c.levels) > 1]
    nums = [c.name for c in cols if c.kind in ("num", "date") and c.filterable]
    first = cats or nums or usable
    return first[0] if first else None


def find_lat_lon(table: pd.DataFrame, lat: str | None = None, lon: str | None = None) -> tuple[str, str] | None:
    """The (latitude, longitude) columns: the ones given, or ``lat``/``lon``, ``latitude``/``longitude``."""
    if lat or lon:
        missing = [c for c in (lat, lon) if not c or c not in table.columns]
        if missing:
            raise ValueError(
                f"--lat/--lon: column(s) {missing} not in the table; it has {', '.join(map(str, table.columns))}"
            )
        return str(lat), str(lon)
    lower = {str(c).lower(): str(c) for c in table.columns}
    for a, b in LAT_LON_NAMES:
        if a in lower and b in lower:
            return lower[a], lower[b]
    return None


def spread_sample(x: np.ndarray, y: np.ndarray, m: int, seed: int) -> np.ndarray:
    """Up to ``m`` rows spread over the plane: one per cell of a grid, then random ones to fill up."""
    from nenya.analysis.plots import cells_on_grid

    n = len(x)
    if n <= m:
        return np.arange(n)
    nxy = max(1, int(math.sqrt(m)) - 2)
    picks, _ = cells_on_grid(x, y, nxy, seed=seed)
    rows = np.unique(np.array([r for _, _, r in picks], dtype=np.int64))[:m]
    if len(rows) < m:
        rest = np.setdiff1d(np.arange(n), rows)
        rng = np.random.default_rng(seed)
        rows = np.concatenate([rows, rng.choice(rest, m - len(rows), replace=False)])
    return np.sort(rows)


def neighbours(vectors: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(rows, scores), each (n, k): every point's ``k`` nearest other points in latent space."""
    from nenya.analysis.search import build_index

    n = len(vectors)
    k = min(k, n - 1)
    if k <= 0:
        return np.zeros((n, 0), np.int32), np.zeros((n, 0), np.float32)
    # approximate beyond 20,000 points: a light HNSW graph is plenty for browsing neighbours
    index = build_index(vectors, kind="flat" if n <= 20_000 else "hnsw", metric=metric, m=16, ef_search=max(32, 3 * k))
    _, scores, rows = index.search(vectors, k + 1)
    out = np.full((n, k), -1, np.int32)
    sc = np.zeros((n, k), np.float32)
    for i in range(n):  # drop the point itself (not always first: duplicates tie)
        keep = rows[i] != i
        got = rows[i][keep][:k]
        out[i, : len(got)] = got
        sc[i, : len(got)] = scores[i][keep][:k]
    return out, sc


def thumbnails(
    x: np.ndarray, y: np.ndarray, shown: np.ndarray, images: Images, max_thumbs: int, seed: int
) -> tuple[list[str], np.ndarray]:
    """``data:`` URIs for up to ``max_thumbs`` points spread over the plane, and the (shown) rows they belong
    to; points whose image cannot be read get none."""
    trows = spread_sample(x, y, max_thumbs, seed)
    uris: list[str] = []
    got: list[int] = []
    for a in range(0, len(trows), 512):
        part = trows[a : a + 512]
        for r, im in zip(part, images.get(shown[part])):
            if im is None:
                continue
            rgb = anomaly_rgb(im) if images.kind == "anomaly" else im
            uris.append(to_data_uri(rgb))
            got.append(int(r))
    return uris, np.asarray(got, dtype=np.int64)


def dt_column(cols: list[Column]) -> str | None:
    """The column Nenya's DT bins filter on: ``DT40``, else ``DT`` (None: neither)."""
    names = {c.name for c in cols}
    return next((n for n in ("DT40", "DT") if n in names), None)

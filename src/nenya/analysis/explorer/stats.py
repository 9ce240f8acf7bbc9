"""The selection's statistics and the filters' charts, defined once for both hosts of the explorer.

Every chart counts points per bin twice: all the points shown (the filters applied) and the
selected ones. The charts are a histogram per filterable column (categories per level; numbers and
dates in :data:`BINS` equal bins over the column's range) and, for the selection statistics panel,
the month of year and the year of the time column and ten-degree latitude bands. Shares (selected
over shown, per bin) and the yearly trend line are drawn by ``nenya.js`` from these counts.

:func:`stats_spec` decides the bins (the page and the server read it from the script's data); the
page counts in ``page_host.js`` and the server with :class:`Binned`, by the same rule: a number's bin
is ``floor((v - lo) / (hi - lo) * bins)``, the last bin closed, NaN and values outside in none;
months and years are UTC.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from nenya.analysis.explorer.data import Column

__all__ = ["BINS", "LAT_STEP", "MIN_COUNT", "Binned", "stats_spec", "time_column"]

BINS = 24  # bins of a number or date column's histogram
LAT_STEP = 10.0  # degrees of a latitude band
MIN_COUNT = 20  # a month, year or band with fewer points shown has no share drawn (nenya trends' --min-count)
TIME_NAMES = ("datetime", "date", "time", "timestamp")


def time_column(cols: list[Column]) -> Column | None:
    """The column the statistics follow in time: ``datetime`` (or date, time, timestamp), else the
    first date column; None without one."""
    dates = [c for c in cols if c.kind == "date" and c.lo is not None]
    for name in TIME_NAMES:
        for c in dates:
            if c.name.lower() == name:
                return c
    return dates[0] if dates else None


def _year(ms: float) -> int:
    return int(np.datetime64(int(ms), "ms").astype("datetime64[Y]").astype(np.int64)) + 1970


def stats_spec(cols: list[Column], lat: np.ndarray | None) -> dict:
    """The bins of every chart (what the page and the server count, and ``nenya.js`` draws).

    ``charts``: one per filterable column (``field`` c<i>, ``kind``, ``n`` bins; numbers and dates
    also ``lo``/``hi``). ``time``: the time column's field and name, with its first and last year;
    ``lat_edges``: the latitude bands over ``lat``'s range (None without a map)."""
    charts = []
    for i, c in enumerate(cols):
        if not c.filters or (c.kind != "cat" and c.lo is None):
            continue
        if c.kind == "cat":
            charts.append({"field": f"c{i}", "kind": "cat", "n": len(c.levels)})
        else:
            charts.append({"field": f"c{i}", "kind": c.kind, "n": BINS, "lo": float(c.lo), "hi": float(c.hi)})  # type: ignore[arg-type]
    t = time_column(cols)
    time = None
    if t is not None:
        time = {"field": f"c{cols.index(t)}", "name": t.name, "y0": _year(t.lo), "y1": _year(t.hi)}  # type: ignore[arg-type]
    edges = None
    if lat is not None:
        f = lat[np.isfinite(lat)]
        if len(f):
            lo = math.floor(float(f.min()) / LAT_STEP) * LAT_STEP
            hi = max(math.ceil(float(f.max()) / LAT_STEP) * LAT_STEP, lo + LAT_STEP)
            edges = [float(e) for e in np.arange(lo, hi + LAT_STEP / 2, LAT_STEP)]
    return {"charts": charts, "time": time, "lat_edges": edges, "min_count": MIN_COUNT}


def bin_numbers(v: np.ndarray, lo: float, hi: float, n: int) -> np.ndarray:
    """Each value's bin of ``n`` equal bins over [lo, hi] (the last one closed); -1 for NaN or outside."""
    width = hi - lo if hi > lo else 1.0
    out = np.full(len(v), -1, dtype=np.int16)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(v) & (v >= lo) & (v <= hi)
        out[ok] = np.minimum(np.floor((v[ok] - lo) / width * n), n - 1).astype(np.int16)
    return out


class Binned:
    """Each point's bin in every chart of a :func:`stats_spec` (built once, on first use, by any thread),
    and the counts of shown and selected points per bin.

    Args:
        spec: :func:`stats_spec`'s answer.
        values: each chart's column by field: float64 numbers or dates (ms), or int codes into a
            category's levels (-1 missing).
        lat: every point's latitude (None: no latitude bands).
    """

    def __init__(self, spec: dict, values: dict[str, np.ndarray], lat: np.ndarray | None) -> None:
        self.spec = spec
        self._values = values
        self._lat = lat
        self._codes: dict[str, tuple[np.ndarray, int]] | None = None
        self._lock = threading.Lock()

    def codes(self) -> dict[str, tuple[np.ndarray, int]]:
        """Each chart's bin per point and its number of bins, by key (the chart's field, ``month``,
        ``year``, ``lat``)."""
        with self._lock:
            if self._codes is None:
                self._codes = self._build()
            return self._codes

    def _build(self) -> dict[str, tuple[np.ndarray, int]]:
        out: dict[str, tuple[np.ndarray, int]] = {}
        for ch in self.spec["charts"]:
            v = self._values[ch["field"]]
            if ch["kind"] == "cat":
                out[ch["field"]] = (np.asarray(v).astype(np.int16), ch["n"])
            else:
                out[ch["field"]] = (bin_numbers(np.asarray(v, np.float64), ch["lo"], ch["hi"], ch["n"]), ch["n"])
        t = self.spec["time"]
        if t is not None:
            ms = np.asarray(self._values[t["field"]], np.float64)
            ok = np.isfinite(ms)
            months = np.zeros(len(ms), np.int64)
            months[ok] = ms[ok].astype(np.int64).astype("datetime64[ms]").astype("datetime64[M]").astype(np.int64)
            month = np.where(ok, months % 12, -1).astype(np.int16)
            year = np.where(ok, months // 12 + 1970 - t["y0"], -1).astype(np.int16)
            out["month"] = (month, 12)
            out["year"] = (year, t["y1"] - t["y0"] + 1)
        edges = self.spec["lat_edges"]
        if edges is not None and self._lat is not None:
            out["lat"] = (
                bin_numbers(np.asarray(self._lat, np.float64), edges[0], edges[-1], len(edges) - 1),
                len(edges) - 1,
            )
        return out

    def counts(self, rows: np.ndarray | slice) -> dict[str, list[int]]:
        """Points per bin of every chart among ``rows`` (indices, or a boolean mask)."""
        out = {}
        for key, (code, n) in self.codes().items():
            c = code[rows]
            out[key] = np.bincount(c[c >= 0], minlength=n)[:n].tolist()
        return out

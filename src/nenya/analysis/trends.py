"""Where and when a pattern occurs: a region's share of a collection by month, year and place.

A *region* is a subset of a collection's items (a pandas query on its table, a polygon in UMAP
coordinates, a cluster label, or the ids of an explorer export), measured against the collection or
a ``within`` subset of it (a DT bin, say). Nenya's papers follow a region's share by month and year
and fit it with 11 month dummies plus a linear time term (the time coefficient, with its standard
error, is the inter-annual trend); the same fit is here (ordinary least squares on the monthly
shares, from statsmodels), beside a binomial GLM of the monthly counts (which suits shares: its slope
is on the log-odds scale). Shares on an equal-area geographic grid go with the collection's counts,
cells with too few items masked. Months with too few items are left out of the fits and said so.

    >>> r = trends(table, region_mask(table, where="DT40 > 1 and U0 < 2")[0], within="DT40 > 0.5")
    >>> r.fit["ols"]["slope_per_decade"], r.fit["ols"]["se"]                    # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from nenya._errors import NenyaError

__all__ = ["Trends", "region_mask", "trends", "grid_cells", "cell_bounds", "write_trends"]

MIN_COUNT = 20  # items a month (or a grid cell) needs for its share to be shown and fitted


def _statsmodels():
    try:
        import statsmodels.api as sm
    except ImportError:
        raise NenyaError(
            'nenya trends fits with statsmodels: pip install "nenya[science]" (or pip install statsmodels)'
        ) from None
    return sm


# -- the region -------------------------------------------------------------------------------------
def region_mask(
    table: pd.DataFrame,
    *,
    where: str | None = None,
    polygon: list[tuple[float, float]] | None = None,
    xy: tuple[str, str] = ("U0", "U1"),
    label: tuple[str, str] | None = None,
    ids: list[str] | None = None,
) -> tuple[np.ndarray, str]:
    """The rows of ``table`` in the region, and the region in words. Exactly one way to give it."""
    given = [w for w, v in (("where", where), ("polygon", polygon), ("label", label), ("ids", ids)) if v is not None]
    if len(given) != 1:
        raise ValueError(f"give the region one way (--where, --polygon, --label or --ids); got {given or 'none'}")
    if where is not None:
        return _query(table, where, "--where"), f"where {where}"
    if polygon is not None:
        from matplotlib.path import Path

        missing = [c for c in xy if c not in table.columns]
        if missing:
            raise ValueError(f"--polygon is in {xy[0]}/{xy[1]} coordinates; the table has no {', '.join(missing)}")
        if len(polygon) < 3:
            raise ValueError("--polygon needs at least three vertices: x0,y0,x1,y1,x2,y2,...")
        pts = table[list(xy)].to_numpy(dtype=np.float64)
        inside = Path(np.asarray(polygon, dtype=np.float64)).contains_points(np.nan_to_num(pts, nan=np.inf))
        return inside & np.isfinite(pts).all(axis=1), f"inside a polygon of {len(polygon)} vertices in {xy[0]}/{xy[1]}"
    if label is not None:
        col, value = label
        if col not in table.columns:
            raise ValueError(f"--label {col}={value}: the table has no column {col}")
        return (table[col].astype(str) == str(value)).to_numpy(), f"{col} = {value}"
    assert ids is not None
    wanted = set(map(str, ids))
    mask = table["id"].astype(str).isin(wanted).to_numpy()
    if mask.sum() < len(wanted):
        raise ValueError(f"{len(wanted) - int(mask.sum())} of the {len(wanted)} ids given are not in the table")
    return mask, f"{len(wanted):,} ids"


def _query(table: pd.DataFrame, q: str, flag: str) -> np.ndarray:
    try:
        return np.array(table.eval(q), dtype=bool)  # a copy: pandas may hand out a read-only view
    except Exception as e:  # pandas raises many kinds for a bad expression
        cols = ", ".join(map(str, table.columns))
        raise ValueError(f"{flag} {q!r}: {type(e).__name__}: {e}; columns: {cols}") from None


# -- the result -------------------------------------------------------------------------------------
@dataclass
class Trends:
    """A region's share by month (``monthly``: year, month, t in decimal years, n items, k in the
    region, share, used in the fits), by month of year (``seasonal``), by year (``yearly``), on the
    grid (``grid``, None without latitude and longitude) and the fits (``fit``)."""

    region: str
    within: str
    n: int
    k: int
    monthly: pd.DataFrame
    seasonal: pd.DataFrame
    yearly: pd.DataFrame
    fit: dict | None  # None: too few months for the fit (``notes`` says why); the shares stand
    grid: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        top = []
        if self.grid is not None:
            used = self.grid[self.grid["used"]].sort_values("share", ascending=False).head(10)
            top = used[["lat0", "lat1", "lon0", "lon1", "n", "k", "share"]].to_dict("records")
        return {
            "region": self.region,
            "within": self.within,
            "items": self.n,
            "in_region": self.k,
            "share": self.k / self.n if self.n else None,
            "fit": self.fit,
            "top_cells": top,
            "notes": self.notes,
        }


def trends(
    table: pd.DataFrame,
    region: np.ndarray,
    *,
    within: str | None = None,
    time: str = "datetime",
    latlon: tuple[str, str] | None = None,
    cell_deg: float = 10.0,
    min_count: int = MIN_COUNT,
    description: str = "",
) -> Trends:
    """A region's share by month, month of year, year and grid cell, with the trend fits."""
    region = np.asarray(region, dtype=bool)
    if len(region) != len(table):
        raise ValueError(f"the region has {len(region)} rows; the table {len(table)}")
    notes: list[str] = []
    keep = _query(table, within, "--within") if within else np.ones(len(table), bool)
    if not keep.any():
        raise ValueError(f"--within {within!r} keeps no item")
    t, dated = _times(table, time, notes)
    keep &= dated
    k, n = int((region & keep).sum()), int(keep.sum())
    if k == 0 or k == n:
        what = "no item" if k == 0 else f"every one of the {n:,} items"
        raise ValueError(
            f"the region holds {what} (of those dated{' and within' if within else ''}): no share to follow"
        )
    sub = pd.DataFrame({"t": t[keep], "in": region[keep]})
    monthly = _monthly(sub, min_count, notes)
    grid = None
    if latlon is not None:
        lat = pd.to_numeric(table[latlon[0]], errors="coerce").to_numpy(dtype=np.float64)[keep]
        lon = pd.to_numeric(table[latlon[1]], errors="coerce").to_numpy(dtype=np.float64)[keep]
        grid = _grid(lat, lon, sub["in"].to_numpy(), cell_deg, min_count)
    return Trends(
        region=description or "the region",
        within=within or "the whole collection",
        n=n,
        k=k,
        monthly=monthly,
        seasonal=_shares(sub["in"], {"month": sub["t"].dt.month}),
        yearly=_shares(sub["in"], {"year": sub["t"].dt.year}),
        fit=_fit_or_note(monthly, notes),
        grid=grid,
        notes=notes,
    )


def _times(table: pd.DataFrame, time: str, notes: list[str]) -> tuple[pd.Series, np.ndarray]:
    if time not in table.columns:
        raise ValueError(
            f"no date column {time!r} in the table (--time names it); columns: {', '.join(map(str, table.columns))}"
        )
    raw = table[time]
    t = pd.to_datetime(raw, errors="coerce", utc=True, format="mixed")
    bad = t.isna() & raw.notna() & (raw.astype(str).str.strip() != "")
    if bad.any():
        examples = ", ".join(map(repr, raw[bad].astype(str).unique()[:3]))
        raise ValueError(f"{int(bad.sum()):,} value(s) of {time!r} are not dates (for example {examples})")
    dated = t.notna().to_numpy()
    if not dated.all():
        notes.append(f"{int((~dated).sum()):,} item(s) without a date left out")
    return t, dated


def _shares(inside: pd.Series | np.ndarray, keys: dict[str, Any]) -> pd.DataFrame:
    """Per group of ``keys`` (name -> values): n items, k of them ``inside``, and the share k / n."""
    g = pd.Series(np.asarray(inside, bool)).groupby([pd.Series(np.asarray(v), name=k) for k, v in keys.items()])
    out = pd.DataFrame({"n": g.size(), "k": g.sum().astype(np.int64)}).reset_index()
    out["share"] = out["k"] / out["n"]
    return out


def _monthly(sub: pd.DataFrame, min_count: int, notes: list[str]) -> pd.DataFrame:
    m = _shares(sub["in"], {"year": sub["t"].dt.year, "month": sub["t"].dt.month})
    m["t"] = m["year"] + (m["month"] - 0.5) / 12.0  # the middle of the month, in decimal years
    m["used"] = m["n"] >= min_count
    if (~m["used"]).any():
        notes.append(f"{int((~m['used']).sum())} month(s) with fewer than {min_count} items masked (not fitted)")
    return m[["year", "month", "t", "n", "k", "share", "used"]]


def _fit_or_note(monthly: pd.DataFrame, notes: list[str]) -> dict | None:
    """The fits, or None with the reason in ``notes`` (the shares are written either way)."""
    try:
        return _fits(monthly)
    except ValueError as e:
        notes.append(f"no trend fitted: {e}")
        return None


def _design(m: pd.DataFrame) -> tuple[np.ndarray, float]:
    """[1, 11 month dummies (February..December), years since the first month]."""
    t0 = float(m["t"].min())
    dummies = (m["month"].to_numpy()[:, None] == np.arange(2, 13)[None, :]).astype(np.float64)
    return np.column_stack([np.ones(len(m)), dummies, m["t"].to_numpy() - t0]), t0


def _fits(monthly: pd.DataFrame) -> dict:
    """The OLS fit Nenya uses (share ~ month dummies + time) and a binomial GLM of the counts."""
    sm = _statsmodels()
    m = monthly[monthly["used"]].reset_index(drop=True)
    if len(m) < 14 or m["month"].nunique() < 12:
        raise ValueError(
            f"{len(m)} month(s) with enough items, covering {m['month'].nunique()} of 12 calendar months: a fit of "
            "11 month dummies and a trend needs more than a year of data (lower --min-count?)"
        )
    x, t0 = _design(m)
    ols = sm.OLS(m["share"].to_numpy(), x).fit()
    effects = np.concatenate([[0.0], ols.params[1:12]])
    glm = sm.GLM(np.column_stack([m["k"], m["n"] - m["k"]]), x, family=sm.families.Binomial()).fit()
    return {
        "t0": t0,
        "months_used": len(m),
        "months_masked": int((~monthly["used"]).sum()),
        "ols": {
            "slope_per_decade": 10 * float(ols.params[12]),
            "se": 10 * float(ols.bse[12]),
            "p": float(ols.pvalues[12]),
            "seasonal_amplitude": float(effects.max() - effects.min()),
            "month_effects": effects.tolist(),
            "intercept": float(ols.params[0]),
        },
        "glm": {
            "slope_per_decade_logit": 10 * float(glm.params[12]),
            "se": 10 * float(glm.bse[12]),
            "p": float(glm.pvalues[12]),
            "odds_ratio_per_decade": float(np.exp(10 * glm.params[12])),
        },
    }


# -- the grid ---------------------------------------------------------------------------------------
def grid_cells(lat: np.ndarray, lon: np.ndarray, cell_deg: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """Equal-area cells (Lambert's cylindrical equal-area grid): latitude bands equal in sin(latitude),
    each cut into the same longitude bins, about ``cell_deg`` degrees square at the equator (taller
    towards the poles, every cell the same area). Returns (band, bin); -1 for no position."""
    nb, nlon = _bands(cell_deg)
    ok = np.isfinite(lat) & np.isfinite(lon) & (np.abs(lat) <= 90)
    s = np.sin(np.radians(np.where(ok, lat, 0.0)))
    band = np.clip(((s + 1) / 2 * nb).astype(np.int64), 0, nb - 1)
    x = (np.where(ok, lon, 0.0) + 180.0) % 360.0
    lbin = np.minimum((x / 360.0 * nlon).astype(np.int64), nlon - 1)
    return np.where(ok, band, -1), np.where(ok, lbin, -1)


def _bands(cell_deg: float) -> tuple[int, int]:
    if not cell_deg > 0:
        raise ValueError(f"--cell-deg must be positive; got {cell_deg}")
    return max(1, int(round(2.0 / np.radians(cell_deg)))), max(1, int(round(360.0 / cell_deg)))


def cell_bounds(cells: pd.DataFrame, cell_deg: float) -> pd.DataFrame:
    """``cells`` (with ``band`` and ``bin`` from :func:`grid_cells`) with each cell's lat0, lat1, lon0, lon1."""
    nb, nlon = _bands(cell_deg)
    edges = np.degrees(np.arcsin(np.linspace(-1, 1, nb + 1)))
    band, lbin = cells["band"].to_numpy(), cells["bin"].to_numpy()
    return cells.assign(
        lat0=edges[band], lat1=edges[band + 1], lon0=lbin * 360.0 / nlon - 180.0, lon1=(lbin + 1) * 360.0 / nlon - 180.0
    )


def _grid(lat: np.ndarray, lon: np.ndarray, inside: np.ndarray, cell_deg: float, min_count: int) -> pd.DataFrame:
    band, lbin = grid_cells(lat, lon, cell_deg)
    ok = band >= 0
    out = cell_bounds(_shares(inside[ok], {"band": band[ok], "bin": lbin[ok]}), cell_deg)
    out["used"] = out["n"] >= min_count
    return out[["band", "bin", "lat0", "lat1", "lon0", "lon1", "n", "k", "share", "used"]]


# -- outputs ----------------------------------------------------------------------------------------
def write_trends(r: Trends, folder: str) -> list[str]:
    """``monthly.csv``, ``seasonal.csv``, ``yearly.csv``, ``grid.csv`` (with positions), ``summary.json``
    and ``trends.png`` in ``folder``; their paths."""
    from nenya.analysis.latents import local_target
    from nenya.analysis.trend_plots import plot_trends
    from nenya.pipeline import storage

    if not storage.is_remote(folder):
        os.makedirs(folder, exist_ok=True)
    out = []
    tables: dict[str, Any] = {"monthly": r.monthly, "seasonal": r.seasonal, "yearly": r.yearly, "grid": r.grid}
    for name, df in tables.items():
        if df is None:
            continue
        path = storage.join(folder, f"{name}.csv")
        with local_target(path) as tmp:
            df.to_csv(tmp, index=False)
        out.append(path)
    path = storage.join(folder, "summary.json")
    with local_target(path) as tmp, open(tmp, "w") as f:
        json.dump(r.summary(), f, indent=2)
    out.append(path)
    out.append(plot_trends(r, storage.join(folder, "trends.png")))
    return out

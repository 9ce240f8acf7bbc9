"""The figure of ``nenya trends``: the monthly share with the fitted trend, the seasonal cycle and,
with positions, the share on the equal-area grid over coastlines."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from nenya.analysis.plots import _figure, _save

if TYPE_CHECKING:
    from nenya.analysis.trends import Trends

__all__ = ["plot_trends", "draw_cells"]


def plot_trends(r: Trends, path: str) -> str:
    """Write the figure to ``path`` (PNG); returns it."""
    rows = 3 if r.grid is not None else 2
    fig = _figure(10, 3.2 * rows)
    _series(fig.add_subplot(rows, 1, 1), r)
    _seasonal(fig.add_subplot(rows, 1, 2), r)
    if r.grid is not None:
        _map(fig, fig.add_subplot(rows, 1, 3), r)
    fig.suptitle(f"{r.region}: {r.k:,} of {r.n:,} items ({r.within})", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def _series(ax, r: Trends) -> None:
    m = r.monthly
    used = m[m["used"]]
    ax.plot(used["t"], used["share"], ".", ms=4, color="#1f77b4", label="monthly share")
    if (~m["used"]).any():
        ax.plot(
            m.loc[~m["used"], "t"], m.loc[~m["used"], "share"], "x", ms=4, color="#bbbbbb", label="too few (masked)"
        )
    ax.set_xlabel("year")
    ax.set_ylabel("share")
    if r.fit is None:
        ax.set_title("no trend fitted: too few months with enough items (see summary.json's notes)", fontsize=9)
        ax.legend(fontsize=7, loc="best")
        return
    ols = r.fit["ols"]
    effects = np.asarray(ols["month_effects"])
    t = used["t"].to_numpy()
    fitted = ols["intercept"] + effects[used["month"].to_numpy() - 1] + ols["slope_per_decade"] / 10 * (t - r.fit["t0"])
    ax.plot(t, fitted, "-", lw=1, color="#d62728", label="11 month dummies + trend")
    trend = ols["intercept"] + effects.mean() + ols["slope_per_decade"] / 10 * (t - r.fit["t0"])
    ax.plot(t, trend, "--", lw=1.5, color="#222222")
    ax.set_title(
        f"trend {ols['slope_per_decade']:+.4f} ± {ols['se']:.4f} per decade (p = {ols['p']:.3g}); "
        f"seasonal amplitude {ols['seasonal_amplitude']:.4f}",
        fontsize=9,
    )
    ax.legend(fontsize=7, loc="best")


def _seasonal(ax, r: Trends) -> None:
    s = r.seasonal
    se = np.sqrt(s["share"] * (1 - s["share"]) / s["n"].clip(lower=1))
    ax.errorbar(s["month"], s["share"], yerr=se, fmt="o-", ms=4, capsize=2)
    ax.set_xticks(range(1, 13))
    ax.set_xticklabels(list("JFMAMJJASOND"))
    ax.set_xlabel("month")
    ax.set_ylabel("share")
    ax.set_title("share by month of year (all years)", fontsize=9)


def _map(fig, ax, r: Trends) -> None:
    g = r.grid[r.grid["used"]] if r.grid is not None else None
    if g is not None:
        draw_cells(fig, ax, g, g["share"], "share", "share on an equal-area grid (cells with too few items left blank)")


def draw_cells(fig, ax, cells, values, label: str, title: str) -> None:
    """Grid cells (lat0, lat1, lon0, lon1) coloured by ``values``, over coastlines, on a world map."""
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    from nenya.analysis.explorer.coastlines import coastlines

    if len(cells):
        boxes = [
            Rectangle((a, b), c - a, d - b)
            for a, b, c, d in zip(cells["lon0"], cells["lat0"], cells["lon1"], cells["lat1"])
        ]
        pc = PatchCollection(boxes, cmap="viridis", edgecolor="none")
        pc.set_array(np.asarray(values, np.float64))
        ax.add_collection(pc)
        fig.colorbar(pc, ax=ax, label=label, fraction=0.03)
    coast = coastlines()
    if coast is not None:
        for lo, la in zip(*coast):
            ax.plot(lo, la, lw=0.4, color="#555555")
    ax.set_xlim(-180, 180)
    ax.set_ylim(-90, 90)
    ax.set_aspect("equal")
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    ax.set_title(title, fontsize=9)

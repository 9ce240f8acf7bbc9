"""The pictures of ``nenya outliers``: the score histogram with the cut, the most unusual images, and
where and when the outliers are (mean score and outlier share on an equal-area grid; the outlier share
by month and by year), each when the table has what it needs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from nenya.analysis.plots import _figure, _save, image_rows

if TYPE_CHECKING:
    from nenya.analysis.outliers import OutlierResult

__all__ = ["plot_outliers"]

GALLERY = 24


def plot_outliers(r: OutlierResult, folder: str, *, images=None) -> list[str]:
    """Write the pictures to ``folder``; their paths."""
    from nenya.analysis.explorer.data import find_lat_lon
    from nenya.pipeline import storage

    t = r.table[r.table["valid"]]
    label = "log-likelihood" if r.record.get("method") == "flow" else "minus the mean kNN distance"
    out = [_histogram(t, label, storage.join(folder, "histogram.png"))]
    if images is not None and getattr(images, "kind", None) is not None:
        worst = t.sort_values("rank").head(GALLERY)
        rows = [int(i) for i in worst.index]
        pics = images.get(rows)
        per_row = 8
        grid = [pics[a : a + per_row] for a in range(0, len(pics), per_row)]
        titles = [f"ranks {a + 1}-{min(a + per_row, len(pics))}" for a in range(0, len(pics), per_row)]
        kind = "anomaly" if images.kind == "anomaly" else "photo"
        out.append(image_rows(grid, titles, storage.join(folder, "gallery.png"), kind=kind, title="the most unusual"))
    latlon = find_lat_lon(t)
    if latlon is not None:
        out.append(_map(t, latlon, label, storage.join(folder, "map.png")))
    when = next((c for c in ("datetime", "date", "time") if c in t.columns), None)
    if when is not None:
        dates = pd.to_datetime(t[when], errors="coerce", utc=True, format="mixed")
        if dates.notna().any():
            out.append(_time(t.assign(_t=dates).dropna(subset=["_t"]), storage.join(folder, "months.png")))
    return out


def _histogram(t: pd.DataFrame, label: str, path: str) -> str:
    fig = _figure(7, 3.5)
    ax = fig.add_subplot(1, 1, 1)
    ax.hist(t["score"], bins=100, color="#4c72b0")
    cut = t.loc[t["outlier"], "score"].max()
    ax.axvline(cut, color="#d62728", lw=1.5, label=f"outliers: the lowest {int(t['outlier'].sum()):,}")
    ax.set_xlabel(label)
    ax.set_ylabel("items")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _map(t: pd.DataFrame, latlon: tuple[str, str], label: str, path: str, cell_deg: float = 10.0) -> str:
    from nenya.analysis.trend_plots import draw_cells
    from nenya.analysis.trends import cell_bounds, grid_cells

    lat = pd.to_numeric(t[latlon[0]], errors="coerce").to_numpy(np.float64)
    lon = pd.to_numeric(t[latlon[1]], errors="coerce").to_numpy(np.float64)
    band, lbin = grid_cells(lat, lon, cell_deg)
    g = pd.DataFrame({"band": band, "bin": lbin, "score": t["score"].to_numpy(), "out": t["outlier"].to_numpy()})
    g = (
        g[g["band"] >= 0]
        .groupby(["band", "bin"])
        .agg(score=("score", "mean"), share=("out", "mean"), n=("out", "size"))
    )
    g = cell_bounds(g[g["n"] >= 10].reset_index(), cell_deg)
    fig = _figure(10, 8)
    for i, (col, title) in enumerate(((("score", f"mean {label}")), ("share", "outlier share"))):
        draw_cells(
            fig,
            fig.add_subplot(2, 1, i + 1),
            g,
            g[col],
            title,
            f"{title} on an equal-area grid (cells of at least 10 items)",
        )
    return _save(fig, path)


def _time(t: pd.DataFrame, path: str) -> str:
    fig = _figure(10, 3.5)
    for i, (key, label) in enumerate(((t["_t"].dt.month, "month"), (t["_t"].dt.year, "year"))):
        ax = fig.add_subplot(1, 2, i + 1)
        share = t.groupby(key.values)["outlier"].mean()
        ax.bar(share.index, share.to_numpy(), color="#4c72b0")
        ax.set_xlabel(label)
        ax.set_ylabel("outlier share")
    fig.tight_layout()
    return _save(fig, path)

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
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    from nenya.analysis.explorer.coastlines import coastlines
    from nenya.analysis.trends import grid_cells

    lat = pd.to_numeric(t[latlon[0]], errors="coerce").to_numpy(np.float64)
    lon = pd.to_numeric(t[latlon[1]], errors="coerce").to_numpy(np.float64)
    band, lbin = grid_cells(lat, lon, cell_deg)
    nb, nlon = int(round(2.0 / np.radians(cell_deg))), int(round(360.0 / cell_deg))
    edges = np.degrees(np.arcsin(np.linspace(-1, 1, nb + 1)))
    g = pd.DataFrame({"band": band, "bin": lbin, "score": t["score"].to_numpy(), "out": t["outlier"].to_numpy()})
    g = (
        g[g["band"] >= 0]
        .groupby(["band", "bin"])
        .agg(score=("score", "mean"), share=("out", "mean"), n=("out", "size"))
    )
    g = g[g["n"] >= 10].reset_index()
    fig = _figure(10, 8)
    coast = coastlines()
    for i, (col, title) in enumerate(((("score", f"mean {label}")), ("share", "outlier share"))):
        ax = fig.add_subplot(2, 1, i + 1)
        boxes = [Rectangle((b * 360.0 / nlon - 180, edges[a]), 360.0 / nlon, edges[a + 1] - edges[a])
                 for a, b in zip(g["band"], g["bin"])]  # fmt: skip
        pc = PatchCollection(boxes, cmap="viridis", edgecolor="none")
        pc.set_array(g[col].to_numpy())
        ax.add_collection(pc)
        fig.colorbar(pc, ax=ax, fraction=0.03)
        if coast is not None:
            for lo, la in zip(*coast):
                ax.plot(lo, la, lw=0.4, color="#555555")
        ax.set_xlim(-180, 180)
        ax.set_ylim(-90, 90)
        ax.set_aspect("equal")
        ax.set_title(f"{title} on an equal-area grid (cells of at least 10 items)", fontsize=9)
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

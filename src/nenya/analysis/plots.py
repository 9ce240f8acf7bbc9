"""Pictures of latent spaces as PNG files: UMAP scatter, image gallery on the UMAP grid, neighbour strips."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from nenya.analysis.images import ANOMALY_CMAP
from nenya.analysis.latents import local_target

log = logging.getLogger(__name__)

__all__ = [
    "grid_umap",
    "cells_on_grid",
    "scatter_plot",
    "gallery_plot",
    "neighbours_plot",
    "image_rows",
    "is_categorical",
]


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def _save(fig, path: str, dpi: int = 100) -> str:
    with local_target(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return path


def is_categorical(values: pd.Series | np.ndarray, max_levels: int = 40) -> bool:
    """Whether ``values`` are coloured by category: text or booleans, or integers with at most
    ``min(max_levels, 20)`` distinct values."""
    s = pd.Series(values)
    if not pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
        return True
    return pd.api.types.is_integer_dtype(s) and s.nunique() <= min(max_levels, 20)


def grid_umap(U0: np.ndarray, U1: np.ndarray, nxy: int = 16, percent: Sequence[float] = (0.05, 99.95)) -> dict:
    """Nenya's grid over the UMAP plane: cells of (range between the percentiles) / ``nxy``,
    one extra cell on every side. Returns xmin, xmax, ymin, ymax, xval, yval (cell edges), dxv, dyv."""
    xmin, xmax = np.percentile(U0, list(percent))
    ymin, ymax = np.percentile(U1, list(percent))
    dxv = (xmax - xmin) / nxy or 1.0
    dyv = (ymax - ymin) / nxy or 1.0
    xmin, xmax, ymin, ymax = xmin - dxv, xmax + dxv, ymin - dyv, ymax + dyv
    xval = xmin + dxv * np.arange(nxy + 3)
    yval = ymin + dyv * np.arange(nxy + 3)
    return dict(
        xmin=float(xmin),
        xmax=float(xmax),
        ymin=float(ymin),
        ymax=float(ymax),
        xval=xval,
        yval=yval,
        dxv=float(dxv),
        dyv=float(dyv),
    )


def cells_on_grid(
    U0: np.ndarray,
    U1: np.ndarray,
    nxy: int = 16,
    *,
    min_pts: int = 1,
    seed: int = 0,
    percent: Sequence[float] = (0.05, 99.95),
    grid: dict | None = None,
) -> tuple[list[tuple[int, int, int]], dict]:
    """One random point per grid cell holding at least ``min_pts`` points.

    Returns:
        ``(picks, grid)``: ``picks`` lists ``(ix, iy, row)`` (row = index into U0/U1), ``grid`` is
        :func:`grid_umap`'s dict (``grid``, when given, is used instead of a new one).
    """
    U0, U1 = np.asarray(U0, dtype=np.float64), np.asarray(U1, dtype=np.float64)
    grid = grid if grid is not None else grid_umap(U0, U1, nxy, percent)
    ix = np.floor((U0 - grid["xmin"]) / grid["dxv"]).astype(np.int64)
    iy = np.floor((U1 - grid["ymin"]) / grid["dyv"]).astype(np.int64)
    ncell = len(grid["xval"]) - 1
    ok = (ix >= 0) & (ix < ncell) & (iy >= 0) & (iy < ncell) & np.isfinite(U0) & np.isfinite(U1)
    rng = np.random.default_rng(seed)
    cell = np.where(ok, ix * ncell + iy, -1)
    order = np.argsort(cell, kind="stable")
    bounds = np.searchsorted(cell[order], np.arange(ncell * ncell + 1))
    picks = []
    for c in range(ncell * ncell):
        a, b = bounds[c], bounds[c + 1]
        if b - a >= max(min_pts, 1):
            picks.append((c // ncell, c % ncell, int(order[a + rng.integers(b - a)])))
    return picks, grid


def scatter_plot(
    x: np.ndarray,
    y: np.ndarray,
    path: str,
    *,
    color: np.ndarray | pd.Series | None = None,
    color_name: str | None = None,
    title: str | None = None,
    xlabel: str = "U0",
    ylabel: str = "U1",
    size: float | None = None,
    seed: int = 0,
) -> str:
    """A scatter of the UMAP (or PCA) plane coloured by a column; numeric columns get a colour bar,
    categorical ones a legend. Points are drawn in random order so no class hides another."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n = len(x)
    order = np.random.default_rng(seed).permutation(n)
    s = size if size is not None else float(np.clip(4000 / max(n, 1), 0.2, 12))
    fig = _figure(8, 7)
    ax = fig.add_subplot()
    if color is None:
        ax.scatter(x[order], y[order], s=s, c="#3b6ea8", linewidths=0, rasterized=True)
    elif is_categorical(color):
        codes, levels = pd.factorize(pd.Series(color).astype(str), sort=True)
        import matplotlib

        cmap = matplotlib.colormaps["tab10" if len(levels) <= 10 else "tab20"]
        colours = cmap(codes % cmap.N)
        ax.scatter(x[order], y[order], s=s, c=colours[order], linewidths=0, rasterized=True)
        from matplotlib.lines import Line2D

        shown = levels[:20]
        handles = [Line2D([], [], marker="o", ls="", color=cmap(i % cmap.N), label=str(v)) for i, v in enumerate(shown)]
        ax.legend(handles=handles, title=color_name, fontsize=8, markerscale=1.2, loc="best")
    else:
        vals = pd.to_numeric(pd.Series(color), errors="coerce").to_numpy(dtype=np.float64)
        sc = ax.scatter(x[order], y[order], s=s, c=vals[order], cmap="viridis", linewidths=0, rasterized=True)
        fig.colorbar(sc, ax=ax, label=color_name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title or f"{n:,} points" + (f", coloured by {color_name}" if color_name else ""))
    return _save(fig, path)


def gallery_plot(
    U0: np.ndarray,
    U1: np.ndarray,
    images: Callable[[list[int]], Sequence[np.ndarray | None]],
    path: str,
    *,
    nxy: int = 16,
    min_pts: int = 1,
    seed: int = 0,
    kind: str = "anomaly",
    title: str | None = None,
    vmax: float | None = None,
    xlabel: str = "U0",
    ylabel: str = "U1",
) -> str:
    """One image per occupied cell of Nenya's UMAP grid, drawn in place over the plane.

    Args:
        U0, U1: coordinates of every point.
        images: a callable ``rows -> list of images`` (e.g. :meth:`ImageLookup.get`): 2-D anomaly fields
            for ``kind="anomaly"`` (one colour scale symmetric about 0, with a colour bar), RGB uint8 for
            ``kind="photo"``.
        path: PNG to write (local or URL).
        nxy, min_pts, seed: grid cells per axis, fewest points for a cell to be drawn, random pick.
        vmax: the anomaly colour scale is [-vmax, vmax] (default: the 99th percentile of |value| of the
            drawn images).
    """
    picks, grid = cells_on_grid(U0, U1, nxy, min_pts=min_pts, seed=seed)
    imgs = images([r for _, _, r in picks]) if picks else []
    fig = _figure(10, 9)
    ax = fig.add_subplot()
    dx, dy = grid["dxv"], grid["dyv"]
    drawn = [(p, im) for p, im in zip(picks, imgs) if im is not None]
    lim = 1.0  # the anomaly colour scale is [-lim, lim]
    if kind == "anomaly" and drawn:
        if vmax is None:
            vmax = float(np.nanpercentile(np.abs(np.concatenate([np.ravel(im) for _, im in drawn])), 99)) or 1.0
        lim = vmax
    mappable = None
    for (ix, iy, _), im in drawn:
        x0, y0 = grid["xval"][ix], grid["yval"][iy]
        extent = (x0, x0 + dx * 0.95, y0, y0 + dy * 0.95)
        if kind == "anomaly":
            mappable = ax.imshow(
                im, extent=extent, origin="lower", cmap=ANOMALY_CMAP, vmin=-lim, vmax=lim, interpolation="nearest"
            )
        else:
            ax.imshow(im, extent=extent, interpolation="bilinear")
    ax.set_xlim(grid["xmin"], grid["xmax"])
    ax.set_ylim(grid["ymin"], grid["ymax"])
    ax.set_aspect("auto")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title or f"{len(drawn)} images on a {nxy}x{nxy} UMAP grid ({len(U0):,} points)")
    if mappable is not None:
        fig.colorbar(mappable, ax=ax, label="anomaly (K)", shrink=0.8)
    if not drawn:
        log.warning("no image could be drawn for the gallery %s", path)
    return _save(fig, path)


def neighbours_plot(
    images: Sequence[np.ndarray | None],
    labels: Sequence[str],
    path: str,
    *,
    kind: str = "anomaly",
    title: str | None = None,
) -> str:
    """A strip: the query (first) and its neighbours, each titled by its label (id and score)."""
    n = max(len(images), 1)
    fig = _figure(min(2.0 * n, 24), 2.6)
    anomaly = [im for im in images if im is not None and kind == "anomaly"]
    vmax = max((float(np.nanmax(np.abs(im))) for im in anomaly), default=1.0) or 1.0
    for i, (im, lab) in enumerate(zip(images, labels)):
        ax = fig.add_subplot(1, n, i + 1)
        ax.set_xticks([])
        ax.set_yticks([])
        if im is None:
            ax.text(0.5, 0.5, "no image", ha="center", va="center", transform=ax.transAxes)
        elif kind == "anomaly":
            ax.imshow(im, origin="lower", cmap=ANOMALY_CMAP, vmin=-vmax, vmax=vmax, interpolation="nearest")
        else:
            ax.imshow(im)
        ax.set_title(str(lab)[:28], fontsize=7, color="#b00" if i == 0 else "black")
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def image_rows(
    rows: Sequence[Sequence[np.ndarray | None]],
    titles: Sequence[str],
    path: str,
    *,
    kind: str = "anomaly",
    title: str | None = None,
) -> str:
    """A grid of images, one titled row per entry of ``rows`` (None: an empty cell). SST anomalies
    share one symmetric colour scale."""
    nrows, ncols = max(len(rows), 1), max((len(r) for r in rows), default=1) or 1
    first = next((im for r in rows for im in r if im is not None), None)
    aspect = first.shape[0] / first.shape[1] if first is not None else 1.0  # rows / columns of an image
    fig = _figure(min(1.6 * ncols, 24), (1.6 * min(aspect, 3) + 0.35) * nrows + 0.4)
    anomaly = [im for r in rows for im in r if im is not None and kind == "anomaly"]
    vmax = max((float(np.nanmax(np.abs(im))) for im in anomaly), default=1.0) or 1.0
    grid = fig.add_gridspec(nrows, ncols, hspace=0.45)
    for i, (row, row_title) in enumerate(zip(rows, titles)):
        for j in range(ncols):
            ax = fig.add_subplot(grid[i, j])
            ax.set_xticks([])
            ax.set_yticks([])
            im = row[j] if j < len(row) else None
            if im is None:
                ax.axis("off")
            elif kind == "anomaly":
                ax.imshow(im, origin="lower", cmap=ANOMALY_CMAP, vmin=-vmax, vmax=vmax, interpolation="nearest")
            else:
                ax.imshow(im)
            if j == 0:
                ax.set_title(row_title, fontsize=8, loc="left")
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)

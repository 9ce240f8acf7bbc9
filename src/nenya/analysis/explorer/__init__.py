"""The interactive explorer: one self-contained HTML file (UMAP scatter, hover images, colour-by, neighbours).

Everything the page needs is inside the file: data as base64 arrays in a JSON block, thumbnails as
``data:`` URIs, inline JS/CSS, and a Content-Security-Policy that forbids any network access. Beyond
``max_points`` the points are decimated (a random sample, said on the page); thumbnails are made for
a sample spread over the plane, and hovering shows the nearest point that has one.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math

import numpy as np
import pandas as pd

from nenya.analysis.explorer._template import TEMPLATE
from nenya.analysis.images import ImageLookup, anomaly_rgb, to_data_uri
from nenya.analysis.latents import local_target

log = logging.getLogger(__name__)

__all__ = ["write_explorer", "MAX_POINTS", "MAX_THUMBS"]

MAX_POINTS = 100_000
MAX_THUMBS = 2000
MAX_LEVELS = 40
SKIP_COLUMNS = {"id", "path", "row", "vector", "tile_x", "tile_y", "pp_idx"}


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")


def _palette() -> tuple[list[list[int]], list[list[int]]]:
    import matplotlib

    vir = (matplotlib.colormaps["viridis"](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(int).tolist()
    tab = matplotlib.colormaps["tab20"](np.arange(20))[:, :3]
    tab = np.concatenate([tab[0::2], tab[1::2]])  # the ten strong colours first
    return vir, (tab * 255).round().astype(int).tolist()


def _column(name: str, s: pd.Series) -> dict | None:
    """A colour-by column for the page, or None when it cannot colour anything."""
    if pd.api.types.is_bool_dtype(s):
        s = s.astype(str)
    if pd.api.types.is_numeric_dtype(s):
        v = s.to_numpy(dtype=np.float32)
        finite = v[np.isfinite(v)]
        if not len(finite):
            return None
        if pd.api.types.is_integer_dtype(s) and s.nunique() <= 20:
            s = s.astype(str)
        else:
            return {
                "name": name,
                "kind": "num",
                "data": _b64(v),
                "min": float(finite.min()),
                "max": float(finite.max()),
            }
    s = s.astype(object).where(s.notna(), "(missing)").astype(str)
    levels = pd.Series(s).value_counts()
    if len(levels) > MAX_LEVELS:
        try:  # dates stored as text: colour by decimal year
            t = pd.to_datetime(s, errors="raise")
            years = (t.dt.year + (t.dt.dayofyear - 1) / 365.25).to_numpy(dtype=np.float32)
            return {
                "name": name,
                "kind": "num",
                "data": _b64(years),
                "min": float(np.nanmin(years)),
                "max": float(np.nanmax(years)),
            }
        except (ValueError, TypeError, OverflowError):
            pass
        if len(levels) > 0.5 * len(s):
            return None  # (nearly) unique values, e.g. names: nothing to colour by
        keep = list(levels.index[: MAX_LEVELS - 1])
        s = s.where(s.isin(keep), "other")
    cats = sorted(str(c) for c in pd.unique(s))
    codes = pd.Categorical(s, categories=cats).codes.astype(np.uint16)
    return {"name": name, "kind": "cat", "codes": _b64(codes), "levels": [str(c) for c in cats]}


def _spread_sample(x: np.ndarray, y: np.ndarray, m: int, seed: int) -> np.ndarray:
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


def _neighbours(vectors: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
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
        keep = rows[i][rows[i] != i][:k]
        out[i, : len(keep)] = keep
        sc[i, : len(keep)] = scores[i][rows[i] != i][:k]
    return out, sc


def write_explorer(
    path: str,
    x: np.ndarray,
    y: np.ndarray,
    table: pd.DataFrame,
    *,
    vectors: np.ndarray | None = None,
    images: ImageLookup | None = None,
    color: str | None = None,
    k: int = 10,
    metric: str = "l2",
    max_points: int = MAX_POINTS,
    max_thumbs: int = MAX_THUMBS,
    thumb_size: int = 64,
    title: str = "nenya explorer",
    seed: int = 0,
) -> str:
    """Write the explorer page to ``path`` (local or URL) and return it.

    Args:
        path: the HTML file to write (the only file written).
        x, y: plane coordinates of every point (e.g. U0, U1).
        table: one row per point with an ``id`` column and the columns to colour by.
        vectors: latent vectors of the points; the page lists each point's ``k`` nearest neighbours in
            latent space (among the points shown). None: no neighbour lists.
        images: where thumbnails come from (SST cutouts or photos); None: no images.
        color: the column coloured at first.
        k: neighbours per point; metric: ``l2``, ``ip`` or ``cosine``.
        max_points: beyond this, a random sample of this size is shown.
        max_thumbs: thumbnails are made for at most this many points, spread over the plane.
        thumb_size: side of photo thumbnails in pixels.
        title: page title; seed: random choices.
    """
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.float32)
    n_all = len(x)
    _check_inputs(n_all, table, vectors)
    rng = np.random.default_rng(seed)
    shown = np.sort(rng.choice(n_all, max_points, replace=False)) if n_all > max_points else np.arange(n_all)
    note = f"{len(shown):,} of {n_all:,} points (random sample)" if len(shown) < n_all else f"{n_all:,} points"
    x, y = x[shown], y[shown]
    tab = table.iloc[shown].reset_index(drop=True)
    n = len(shown)
    columns, color = _columns(tab, color)
    if vectors is not None and k > 0:
        nbr, nsc = _neighbours(np.asarray(vectors, dtype=np.float32)[shown], k, metric)
    else:
        nbr, nsc = np.zeros((n, 0), np.int32), np.zeros((n, 0), np.float32)
    thumbs: list[str] = []
    trows = np.zeros(0, np.int64)
    if images is not None and images.kind is not None and max_thumbs > 0:
        thumbs, trows = _thumbnails(x, y, shown, images, max_thumbs, seed)
        note += f"; images for {len(trows):,}"
    viridis, palette = _palette()
    data = {
        "n": n,
        "title": title,
        "note": note,
        "x": _b64(x),
        "y": _b64(y),
        "ids": [str(i) for i in tab["id"].tolist()],
        "columns": columns,
        "color": color,
        "k": int(nbr.shape[1]),
        "metric": metric,
        "nbr": _b64(nbr.astype(np.int32)),
        "nbr_score": _b64(nsc.astype(np.float32)),
        "thumbs": thumbs,
        "thumb_rows": _b64(trows.astype(np.int32)),
        "viridis": viridis,
        "palette": palette,
    }
    page = _page(data, title)
    with local_target(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(page)
    log.info("explorer: %s (%s, %.1f MB)", path, note, len(page) / 1e6)
    return path


def _check_inputs(n_all: int, table: pd.DataFrame, vectors: np.ndarray | None) -> None:
    """One table row and one vector per point, and an ``id`` column (a ValueError that says which)."""
    if len(table) != n_all or (vectors is not None and len(vectors) != n_all):
        raise ValueError(
            f"x, y, table and vectors must have the same length; got {n_all}, {len(table)}, "
            f"{None if vectors is None else len(vectors)}"
        )
    if "id" not in table.columns:
        raise ValueError("the table needs an 'id' column")


def _columns(tab: pd.DataFrame, color: str | None) -> tuple[list[dict], str | None]:
    """The colour-by columns of the shown rows, and the one coloured at first (checked, or a default)."""
    columns = []
    for c in tab.columns:
        if c in SKIP_COLUMNS:
            continue
        col = _column(str(c), tab[c])
        if col is not None:
            columns.append(col)
    if color is not None and color not in [c["name"] for c in columns]:
        raise ValueError(f"cannot colour by {color!r}; columns: {', '.join(c['name'] for c in columns) or 'none'}")
    if color is None and columns:
        cats = [c["name"] for c in columns if c["kind"] == "cat"]
        color = cats[0] if cats else columns[0]["name"]
    return columns, color


def _thumbnails(
    x: np.ndarray, y: np.ndarray, shown: np.ndarray, images: ImageLookup, max_thumbs: int, seed: int
) -> tuple[list[str], np.ndarray]:
    """``data:`` URIs for up to ``max_thumbs`` points spread over the plane, and the (shown) rows they belong to;
    points whose image cannot be read get none."""
    trows = _spread_sample(x, y, max_thumbs, seed)
    thumbs: list[str] = []
    got: list[int] = []
    for a in range(0, len(trows), 512):
        part = trows[a : a + 512]
        for r, im in zip(part, images.get(shown[part])):
            if im is None:
                continue
            rgb = anomaly_rgb(im) if images.kind == "anomaly" else im
            thumbs.append(to_data_uri(rgb))
            got.append(int(r))
    return thumbs, np.asarray(got, dtype=np.int64)


def _page(data: dict, title: str) -> str:
    """The HTML page: the template with the title and the data blob put in."""
    # JSON inside <script>: escape what could end the element or confuse the HTML parser
    blob = json.dumps(data, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    blob = blob.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    pre, post = TEMPLATE.split("__DATA__")
    return pre.replace("__TITLE__", html.escape(title)) + blob + post

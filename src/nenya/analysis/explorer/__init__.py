"""The interactive explorer: one self-contained HTML page built on Bokeh.

A projection view (UMAP/PCA coordinates) and, when the table has latitude/longitude, a map with
coastlines, linked: a box or lasso selection in either highlights the same points in both. A
selection panel (count, thumbnails, metadata table, Export CSV), filters (a range slider per
numeric or date column, a pick list per category, Nenya's DT bins), colour-by any column, the
``k`` nearest neighbours of a clicked point, and a scripting API (``window.nenya``, see
``docs/explore.md``). Everything the page needs is in the file, and a Content-Security-Policy
forbids it to fetch anything. Beyond ``max_points`` a stated random sample is shown.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from nenya.analysis.dtbins import DT_bins
from nenya.analysis.explorer.coastlines import coastlines
from nenya.analysis.explorer.data import columns, dt_column, find_lat_lon, first_colour, neighbours, thumbnails
from nenya.analysis.explorer.page import PageData, build_page
from nenya.analysis.images import Images
from nenya.analysis.latents import local_target

log = logging.getLogger(__name__)

__all__ = ["write_explorer", "with_dt", "plane_coordinates", "join_columns", "MAX_POINTS", "MAX_THUMBS"]

MAX_POINTS = 250_000
MAX_THUMBS = 2000


def write_explorer(
    path: str,
    x: np.ndarray,
    y: np.ndarray,
    table: pd.DataFrame,
    *,
    vectors: np.ndarray | None = None,
    images: Images | None = None,
    color: str | None = None,
    k: int = 10,
    metric: str = "l2",
    max_points: int = MAX_POINTS,
    max_thumbs: int = MAX_THUMBS,
    title: str = "nenya explorer",
    seed: int = 0,
    lat: str | None = None,
    lon: str | None = None,
    xlabel: str = "U0",
    ylabel: str = "U1",
    source: str | None = None,
) -> str:
    """Write the explorer page to ``path`` (local or URL) and return it.

    Args:
        path: the HTML file to write (the only file written); x, y: every point's projection (U0, U1).
        table: one row per point with an ``id`` column; every other column can colour, filter and
            is exported (array columns such as vectors are left out).
        vectors: latent vectors of the points; a click lists the point's ``k`` nearest neighbours in
            latent space (among the points shown). None: no neighbour lists.
        images: where thumbnails come from (SST cutouts or photos); None: no images.
        color: the column coloured at first.
        k: neighbours per point; metric: ``l2``, ``ip`` or ``cosine``.
        max_points: beyond this, a random sample of this size is shown (and the page says so).
        max_thumbs: thumbnails are made for at most this many points, spread over the plane.
        title: page title; seed: random choices; xlabel, ylabel: axis names of the projection; source: the
            table the page's ``nenya trends`` command names (its latents); lat, lon: the map's columns
            (default: lat/lon or latitude/longitude; else no map).
    """
    x, y = np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.float32)
    n_all = len(x)
    _check_inputs(n_all, table, vectors)
    latlon = find_lat_lon(table, lat, lon)
    shown, note = _sample(n_all, max_points, seed)
    x, y = x[shown], y[shown]
    tab = table.iloc[shown].reset_index(drop=True)
    tab = with_dt(tab)
    cols = columns(tab)
    nbr, nsc = _neighbours(vectors, shown, k, metric)
    thumbs: list[str] = []
    trows = np.zeros(0, np.int64)
    if images is not None and images.kind is not None and max_thumbs > 0:
        thumbs, trows = thumbnails(x, y, shown, images, max_thumbs, seed)
        note += f"; images for {len(trows):,}"
    lonlat = _lonlat(tab, latlon)
    data = PageData(
        title=title,
        note=note,
        x=x,
        y=y,
        xlabel=xlabel,
        ylabel=ylabel,
        ids=[str(i) for i in tab["id"].tolist()],
        columns=cols,
        colour=first_colour(cols, color),
        lonlat=lonlat,
        coast=coastlines() if lonlat is not None else None,
        nbr=nbr,
        nbr_score=nsc,
        metric=metric,
        thumbs=thumbs,
        thumb_rows=trows,
        dt_column=dt_column(cols),
        dt_bins=DT_bins,
        source=source,
    )
    page = build_page(data)
    with local_target(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(page)
    log.info("explorer: %s (%s, %.1f MB)", path, note, len(page) / 1e6)
    return path


def _neighbours(vectors: np.ndarray | None, shown: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Each shown point's ``k`` nearest shown points in latent space (none without vectors)."""
    if vectors is None or k <= 0:
        return np.zeros((len(shown), 0), np.int32), np.zeros((len(shown), 0), np.float32)
    return neighbours(np.asarray(vectors, dtype=np.float32)[shown], k, metric)


def _sample(n_all: int, max_points: int, seed: int) -> tuple[np.ndarray, str]:
    """The rows shown (all, or a sorted random sample of ``max_points``) and the page's note saying which."""
    if n_all <= max_points:
        return np.arange(n_all), f"{n_all:,} points"
    shown = np.sort(np.random.default_rng(seed).choice(n_all, max_points, replace=False))
    return shown, f"{len(shown):,} of {n_all:,} points (a random sample; selections and exports cover these)"


def _lonlat(tab: pd.DataFrame, latlon: tuple[str, str] | None) -> tuple[np.ndarray, np.ndarray] | None:
    """(longitudes, latitudes) as float64 (NaN where not numbers), or None without a map."""
    if latlon is None:
        return None
    la, lo = latlon
    return (
        pd.to_numeric(tab[lo], errors="coerce").to_numpy(dtype=np.float64),
        pd.to_numeric(tab[la], errors="coerce").to_numpy(dtype=np.float64),
    )


def with_dt(tab: pd.DataFrame) -> pd.DataFrame:
    """Nenya's DT = T90 - T10 when the table has those but no DT."""
    if "DT" not in tab.columns and "DT40" not in tab.columns and {"T90", "T10"} <= set(tab.columns):
        tab = tab.copy()
        tab["DT"] = pd.to_numeric(tab["T90"], errors="coerce") - pd.to_numeric(tab["T10"], errors="coerce")
    return tab


def _check_inputs(n_all: int, table: pd.DataFrame, vectors: np.ndarray | None) -> None:
    """One table row and one vector per point, and an ``id`` column (a ValueError that says which)."""
    if len(table) != n_all or (vectors is not None and len(vectors) != n_all):
        raise ValueError(
            f"x, y, table and vectors must have the same length; got {n_all}, {len(table)}, "
            f"{None if vectors is None else len(vectors)}"
        )
    if "id" not in table.columns:
        raise ValueError("the table needs an 'id' column")


PLANE_COLUMNS = (("U0", "U1"), ("US0", "US1"), ("PC0", "PC1"))


def plane_coordinates(
    table: pd.DataFrame, vectors: np.ndarray, *, coords: str | None = None, ntrain: int = 50_000
) -> tuple[np.ndarray, np.ndarray, str, str]:
    """Each row's position on the projection: from a ``coords`` table (``id`` and U0/U1, US0/US1 or
    PC0/PC1, e.g. ``nenya umap``'s output), else a UMAP fitted here. Returns ``(x, y, xlabel, ylabel)``."""
    from nenya._errors import NenyaError
    from nenya.analysis.latents import read_table
    from nenya.analysis.umap import fit_umap

    if coords is None:
        emb = fit_umap(vectors, ntrain=ntrain).embedding
        return emb[:, 0], emb[:, 1], "U0", "U1"
    tab = read_table(coords)
    pair = next(((a, b) for a, b in PLANE_COLUMNS if a in tab.columns and b in tab.columns), None)
    if pair is None or "id" not in tab.columns:
        raise NenyaError(
            f"{coords} needs an id column and U0/U1, US0/US1 or PC0/PC1 (from `nenya umap` or `nenya pca`); "
            f"it has {', '.join(map(str, tab.columns[:20]))}"
        )
    x, y = pair
    merged = table[["id"]].merge(tab[["id", x, y]].drop_duplicates("id"), on="id", how="left")
    missing = int(merged[x].isna().sum())
    if missing:
        raise NenyaError(f"{coords} lacks coordinates for {missing} id(s) of the latents")
    return merged[x].to_numpy(), merged[y].to_numpy(), x, y


def join_columns(table: pd.DataFrame, paths: list[str] | tuple[str, ...]) -> pd.DataFrame:
    """``table`` with the columns of other tables added, matched by ``id`` (``--join``): for example
    ``nenya outliers``' table, to colour and filter by the log-likelihood. Columns ``table`` already
    has are kept as they are; ids a joined table lacks get no value (said in the log)."""
    from nenya._errors import NenyaError
    from nenya.analysis.latents import read_table

    out = table
    for path in paths:
        other = read_table(path)
        if "id" not in other.columns:
            raise NenyaError(f"--join {path}: it needs an id column; it has {', '.join(map(str, other.columns[:20]))}")
        new = [c for c in other.columns if c != "id" and c not in out.columns]
        if not new:
            log.warning("--join %s: adds no column (every one is already shown)", path)
            continue
        other = other[["id", *new]].assign(id=other["id"].astype(str))
        dup = int(other["id"].duplicated().sum())
        if dup:
            log.warning("--join %s: %d repeated ids; the first row of each is used", path, dup)
            other = other.drop_duplicates("id")
        merged = out.assign(id=out["id"].astype(str)).merge(other, on="id", how="left")
        merged["id"] = out["id"].to_numpy()
        lacking = int((~out["id"].astype(str).isin(set(other["id"]))).sum())
        if lacking:
            log.warning("--join %s: %d of %d ids are not in it (no value there)", path, lacking, len(out))
        out = merged
        log.info("--join %s: added %s", path, ", ".join(map(str, new)))
    return out

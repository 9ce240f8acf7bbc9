"""Near-duplicates in latent space, and leakage between splits.

Every vector is queried against all others with a FAISS range search (exact flat index up to
``ivf_above`` vectors, an IVF index beyond: near-duplicates fall in the same or a neighbouring cell;
``exact=True`` searches exhaustively at any size), ``chunk`` queries at a time, so memory holds the
vectors, the index and the pairs found. Pairs closer than the threshold are joined into groups
(union-find); each group's representative is its first member in file order. With a split (a
metadata column, or the HDF5 partition), pairs whose two items are in different splits are leakage.

Distances are Euclidean (``l2``) or ``1 - cosine similarity`` (``cosine``).

Memory: this search holds the vectors twice (float32) plus the index's copy. When ``n x dim x 4``
bytes exceed ``budget`` (default 1 GiB) or with ``codes="sq8"``, the vectors stay on disk instead (a
memory-mapped ``.npy``, or HDF5/Parquet read in slabs) and the index keeps 8-bit codes (one byte per
dimension); the range search is widened by the codes' bound on their error and every candidate pair is
measured again exactly (:mod:`nenya.analysis.duplicates_index`): the pairs and distances of the in-memory
search (which selects by FAISS's float32 distance: they may differ only by rounding at the threshold).
``codes="flat"`` keeps the vectors in memory at any size (faster, more memory).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from nenya.analysis.duplicates_index import Rows, _distance, _prepare, nearest_distances, sq8_index, sq8_pairs
from nenya.analysis.progress import chunk_bar, query_chunks

log = logging.getLogger(__name__)

__all__ = ["DuplicateResult", "find_duplicates", "auto_threshold"]

IVF_ABOVE = 20_000
NPROBE = 8
CHUNK = 8192
AUTO_SAMPLE = 20_000
AUTO_SIGMAS = 5.0
AUTO_RATIO = 3.0  # a gap in the nearest-neighbour distances is a cut when its two sides differ this much
BUDGET = 1 << 30  # bytes of float32 vectors above which codes="auto" takes the 8-bit codes
AUTO_BULK = 0.05  # ... and at least this share of the sample lies above it (the bulk, not its far tail)


@dataclass
class DuplicateResult:
    """What :func:`find_duplicates` found.

    Attributes:
        threshold: the distance under which two items are near-duplicates; ``how``: how it was chosen.
        metric: ``l2`` or ``cosine``.
        groups: ``id``, ``group``, ``representative``, ``distance`` (to the representative), one row per
            item that has a near-duplicate, grouped, in file order within a group.
        pairs: ``id_a``, ``id_b``, ``distance``: every pair under the threshold (``id_a`` first in file order).
        leakage: the pairs whose items are in different splits (``split_a``, ``split_b`` added), or
            None without a split.
    """

    threshold: float
    how: str
    metric: str
    groups: pd.DataFrame
    pairs: pd.DataFrame
    leakage: pd.DataFrame | None


def _index(x: np.ndarray, ivf_above: int, nprobe: int = NPROBE, seed: int = 0):
    """A FAISS L2 index over ``x`` (on unit vectors, L2 ranks as cosine): flat, or IVF for large sets."""
    import faiss

    n, d = x.shape
    index: Any  # flat or IVF
    if n <= ivf_above:
        index = faiss.IndexFlatL2(d)
    else:
        # about 4 sqrt(n) cells, trained on 39 points per cell (FAISS's minimum) in 10 k-means rounds:
        # the cells only need to keep near-identical vectors together, not to be optimal
        nlist = int(max(1, min(n // 39, 4 * np.sqrt(n))))
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist)
        index.cp.niter = 10
        rng = np.random.default_rng(seed)
        index.train(x[np.sort(rng.choice(n, min(n, nlist * 39), replace=False))])
        index.nprobe = max(1, min(nlist, nprobe))
    index.add(x)
    return index


def _to_l2(threshold: float, metric: str) -> float:
    """The squared L2 radius FAISS takes for a distance threshold (cosine: |a-b|^2 = 2 (1 - cos))."""
    return threshold**2 if metric == "l2" else 2.0 * threshold


def _from_sq(d2: np.ndarray, metric: str) -> np.ndarray:
    d2 = np.maximum(d2, 0.0)
    return np.sqrt(d2) if metric == "l2" else d2 / 2.0


def auto_threshold(x: np.ndarray, metric: str = "l2", *, index=None, seed: int = 0) -> tuple[float, str]:
    """A threshold from the distribution of nearest-neighbour distances, and a sentence saying how.

    On up to 20,000 sampled items, each item's distance to its nearest other item (exact, float64).
    Near-duplicates sit far below everything else, whether they are rare or most of the collection: the
    cut is the widest gap between consecutive sorted distances (in log: a ratio) with at least 5% of
    the sample above it (so not a gap in the far tail of the bulk), when its two sides differ at least
    3-fold and by more than twice the spread of the log distances above it; the threshold is the gap's
    geometric middle (exact copies, at distance 0, are below it whatever it is). Without such a gap
    (no near-duplicates stand apart), ``exp(median - 5 x 1.4826 x MAD)`` of the log distances: five
    robust standard deviations below the median.
    """
    xp = _prepare(x, metric)
    index = index if index is not None else _index(xp, IVF_ABOVE)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(xp), min(len(xp), AUTO_SAMPLE), replace=False))
    _, nn = index.search(xp[rows], 2)
    other = np.where(nn[:, 0] == rows, nn[:, 1], nn[:, 0])  # the nearest other item
    found = other >= 0
    rows, other = rows[found], other[found]
    return _threshold_of(np.sort(_distance(xp[rows], xp[other], metric)), metric)


def _threshold_of(dist: np.ndarray, metric: str) -> tuple[float, str]:
    """:func:`auto_threshold`'s choice from sorted nearest-neighbour distances."""
    cut = _gap(dist)
    if cut is not None:
        i, thr = cut
        how = (
            f"auto: the widest gap in the nearest-neighbour {metric} distances of {len(dist):,} sampled items, "
            f"between {dist[i]:.4g} and {dist[i + 1]:.4g} (x{dist[i + 1] / max(dist[i], 1e-300):.3g}; "
            f"{i + 1:,} items below, {len(dist) - i - 1:,} above): its geometric middle {thr:.4g}"
        )
        return thr, how
    logs = np.log(dist[dist > 0]) if (dist > 0).any() else np.zeros(1)
    med = float(np.median(logs))
    mad = float(np.median(np.abs(logs - med))) * 1.4826
    thr = float(np.exp(med - AUTO_SIGMAS * mad))
    how = (
        f"auto: no gap of x{AUTO_RATIO:g} sets near-duplicates apart in the nearest-neighbour {metric} distances of "
        f"{len(dist):,} sampled items (median {np.exp(med):.4g}); exp(median - {AUTO_SIGMAS:g} x 1.4826 x MAD) of "
        f"their logs = {thr:.4g}"
    )
    return thr, how


def _gap(dist: np.ndarray) -> tuple[int, float] | None:
    """The cut of :func:`auto_threshold` in sorted distances: (last row below it, threshold), or None.
    Exact copies (distance 0) are below any cut; the gap is sought among the other distances."""
    pos = dist[dist > 0]
    if len(pos) < 3:
        return None
    logs = np.log(pos)
    gaps = np.diff(logs)
    above = len(pos) - 1 - np.arange(len(pos) - 1)  # items above each gap
    gaps[above < max(1, int(np.ceil(AUTO_BULK * len(dist))))] = -np.inf
    i = int(np.argmax(gaps))
    upper = logs[i + 1 :]
    spread = float(np.median(np.abs(upper - np.median(upper)))) * 1.4826
    if gaps[i] < max(np.log(AUTO_RATIO), 2 * spread):
        return None
    return len(dist) - len(pos) + i, float(np.exp((logs[i] + logs[i + 1]) / 2))


def _pairs(x: np.ndarray, index, radius2: float, metric: str, progress: bool) -> tuple[np.ndarray, ...]:
    """(rows a, rows b, distances) of every pair a < b within the radius, streamed by query chunks."""
    out_a, out_b = [], []
    chunks = query_chunks(len(x), CHUNK)
    with chunk_bar(chunks, "near-duplicate search", progress) as bar:
        for s, e in chunks:
            lims, d2, rows = index.range_search(x[s:e], float(radius2))
            owner = np.repeat(np.arange(s, e), np.diff(lims.astype(np.int64)))
            keep = rows > owner  # each pair once, never an item with itself
            out_a.append(owner[keep])
            out_b.append(rows[keep].astype(np.int64))
            bar.update(e - s)
    if not out_a:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    a, b = np.concatenate(out_a), np.concatenate(out_b)
    return a, b, _distance(x[a], x[b], metric)


def _groups(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The group root (its smallest row) of every row: connected components of the pairs' graph."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    first = np.full(label.max() + 1 if n else 0, n, dtype=np.int64)
    np.minimum.at(first, label, np.arange(n))
    return first[label]


def find_duplicates(
    latents,
    *,
    threshold: float | None = None,
    auto: bool = False,
    metric: str = "l2",
    split_column: str | None = None,
    ivf_above: int = IVF_ABOVE,
    nprobe: int = NPROBE,
    exact: bool = False,
    codes: str = "auto",
    budget: int = BUDGET,
    progress: bool = True,
) -> DuplicateResult:
    """Near-duplicate groups of a latents file, and the pairs that cross splits.

    Args:
        latents: a latents file of any layout nenya writes, an open
            :class:`~nenya.analysis.latents.Latents`, or ``(ids, vectors)`` or
            ``(ids, vectors, metadata DataFrame)`` (vectors may be a memory map).
        threshold: distance under which two items are near-duplicates; or ``auto=True`` to choose it
            (:func:`auto_threshold`).
        metric: ``l2`` (Euclidean) or ``cosine`` (1 - cosine similarity).
        split_column: a metadata column naming each item's split; default the ``partition`` column
            when the file has one (Nenya HDF5: valid/train). Leakage = pairs across splits.
        ivf_above: above this many vectors, an IVF index (approximate, bounded time) instead of flat.
        nprobe: cells of the IVF index searched per query (of about ``4 sqrt(n)``). Near-duplicates
            lie in the same or a neighbouring cell, so a few find them; raise it for large thresholds.
        exact: search exhaustively (a flat index) at any size: every pair, in time growing as n^2.
        codes: ``flat``: the vectors in memory, float32 (today's search); ``sq8``: the vectors left on
            disk (or where the caller holds them), an index of 8-bit codes and an exact re-check of every
            candidate pair (same pairs, less memory, more time); ``auto``: ``sq8`` when the vectors'
            float32 bytes (n x dim x 4) exceed ``budget``.
        budget: bytes of float32 vectors ``codes="auto"`` holds in memory (default 1 GiB).
        progress: a progress bar over the items searched (none for a search done in one chunk).

    Example:
        >>> r = find_duplicates("vectors.parquet", auto=True, split_column="split")   # doctest: +SKIP
        >>> r.threshold, len(r.groups), r.leakage.head()                               # doctest: +SKIP
    """
    if (threshold is None) == (not auto):
        raise ValueError("give a threshold or auto=True (not both)")
    ids, source, meta, close = _open(latents)
    try:
        n, dim = (source.n, source.dim) if hasattr(source, "iter_vectors") else source.shape
        search = _search_flat if _choose(codes, n, dim, budget) == "flat" else _search_sq8
        threshold, how, a, b, d, measure = search(
            source, threshold, metric, ivf_above=len(ids) if exact else ivf_above, nprobe=nprobe, progress=progress
        )
        return _result(ids, meta, split_column, metric, float(threshold), how, a, b, d, measure)
    finally:
        if close:
            source.close()


def _result(ids, meta, split_column, metric, threshold, how, a, b, d, measure) -> DuplicateResult:
    """Pairs, groups (``measure(members, representatives)``: their exact distances) and leakage."""
    pairs = pd.DataFrame({"id_a": ids[a], "id_b": ids[b], "distance": d}).sort_values(["id_a", "id_b"], kind="stable")
    root = _groups(len(ids), a, b)
    members = np.flatnonzero(np.bincount(root, minlength=len(ids))[root] > 1)
    rep = root[members]
    dist = measure(members, rep)
    groups = pd.DataFrame(
        {"id": ids[members], "group": pd.factorize(rep)[0], "representative": ids[rep], "distance": dist}
    ).sort_values(["group", "distance"], kind="stable")
    split = _split(meta, split_column)
    leakage = None
    if split is not None:
        cross = split[a] != split[b]
        leakage = pd.DataFrame(
            {
                "id_a": ids[a][cross],
                "split_a": split[a][cross],
                "id_b": ids[b][cross],
                "split_b": split[b][cross],
                "distance": d[cross],
            }
        )
    log.info(
        "%d pairs in %d groups; leakage: %s",
        len(pairs),
        groups["group"].nunique(),
        "n/a" if leakage is None else len(leakage),
    )
    return DuplicateResult(threshold, how, metric, groups.reset_index(drop=True), pairs.reset_index(drop=True), leakage)


def _open(latents) -> tuple[np.ndarray, Any, pd.DataFrame | None, bool]:
    """(ids, vectors source: an array or a Latents, metadata, whether to close the source)."""
    if isinstance(latents, (str, os.PathLike)):
        from nenya.analysis.latents import open_latents

        lat = open_latents(latents)
        return np.asarray(lat.ids, dtype=object), lat, lat.metadata, True
    if hasattr(latents, "iter_vectors"):
        return np.asarray(latents.ids, dtype=object), latents, latents.metadata, False
    ids, vectors, *rest = latents
    vectors = vectors if isinstance(vectors, np.ndarray) else np.asarray(vectors, dtype=np.float32)
    return np.asarray(ids, dtype=object), vectors, (rest[0] if rest else None), False


def _choose(codes: str, n: int, dim: int, budget: int) -> str:
    """``flat`` or ``sq8`` (see :func:`find_duplicates`), saying why when ``auto`` picks the codes."""
    if codes not in ("auto", "flat", "sq8"):
        raise ValueError(f"unknown codes {codes!r}; expected auto, flat or sq8")
    if codes != "auto" or n * dim * 4 <= budget:
        return "flat" if codes == "auto" else codes
    log.info(
        "near-duplicates: %d x %d float32 vectors take %.2f GB, over the budget of %.2f GB: an index of 8-bit "
        "codes over the vectors left on disk, candidates re-checked exactly; codes='flat' (--codes flat) holds "
        "them in memory instead (about 3x their size, faster)",
        n,
        dim,
        n * dim * 4 / 1e9,
        budget / 1e9,
    )
    return "sq8"


def _search_flat(source, threshold, metric, *, ivf_above, nprobe, progress):
    """The in-memory search: float32 vectors, a flat or IVFFlat index."""
    x = np.asarray(source.vectors() if hasattr(source, "iter_vectors") else source, dtype=np.float32)
    xp = _prepare(x, metric)
    index = _index(xp, ivf_above, nprobe)
    how = f"given: {threshold}"
    if threshold is None:
        threshold, how = auto_threshold(x, metric, index=index)
    del x
    log.info("near-duplicates of %d vectors: %s distance < %.4g (%s)", len(xp), metric, threshold, how)
    a, b, d = _pairs(xp, index, _to_l2(threshold, metric), metric, progress)
    return threshold, how, a, b, d, lambda m, r: _distance(xp[m], xp[r], metric)


def _search_sq8(source, threshold, metric, *, ivf_above, nprobe, progress):
    """The memory-bounded search: 8-bit codes, vectors read in slabs, candidates re-checked exactly."""
    rows = Rows(source, metric)
    index, bound = sq8_index(rows, flat=rows.n <= ivf_above, nprobe=nprobe, progress=progress)
    how = f"given: {threshold}"
    if threshold is None:
        sample = np.sort(np.random.default_rng(0).choice(rows.n, min(rows.n, AUTO_SAMPLE), replace=False))
        threshold, how = _threshold_of(nearest_distances(rows, index, sample, k=8), metric)
    log.info(
        "near-duplicates of %d vectors (8-bit codes, error bound %.3g): %s distance < %.4g (%s)",
        rows.n,
        bound,
        metric,
        threshold,
        how,
    )
    a, b, d = sq8_pairs(rows, index, bound, threshold, _to_l2(threshold, metric), progress)
    return threshold, how, a, b, d, rows.distance


def _split(meta: pd.DataFrame | None, column: str | None) -> np.ndarray | None:
    if column is not None:
        if meta is None or column not in meta.columns:
            have = "none" if meta is None else ", ".join(map(str, meta.columns))
            raise ValueError(f"no column {column!r} to split by; the metadata has {have}")
        return meta[column].astype(str).to_numpy()
    if meta is not None and "partition" in meta.columns and meta["partition"].nunique() > 1:
        return meta["partition"].astype(str).to_numpy()
    return None

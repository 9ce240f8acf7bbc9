"""Agreement between two encodings of the same items: do the neighbourhoods survive a change of model,
checkpoint or precision?

Two figures, on the items both encodings hold (joined on id):

- **kNN overlap@k**: for every item, the Jaccard index of its ``k`` nearest neighbours (itself left
  out) under encoding A and under encoding B; the mean over items, and the items whose
  neighbourhoods changed most. Exact (FAISS brute force, BLAS) up to ``exact_limit`` items; beyond, an
  IVF index (about ``4 sqrt(n)`` cells, each item's cells found once and reused for the index and its
  search), whose recall@k is measured against exact neighbours on a sample of items and reported with the
  sample's overlap under both, so the approximation's effect on the figure is known.
- **linear CKA** (Kornblith et al., 2019): ``||Xc^T Yc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with
  ``Xc``, ``Yc`` the centred vectors; 1 for encodings that differ by a rotation and a scale, near 0 for
  unrelated ones. Computed from (D x D) cross products accumulated in chunks.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from nenya.analysis.progress import chunk_bar, query_chunks

log = logging.getLogger(__name__)

__all__ = ["EncodingAgreement", "compare_encodings", "knn_overlap", "linear_cka"]

#: Exact neighbours up to this many items (an exact search costs n^2 d: about 2 minutes at 100,000 on 2 cores).
EXACT_LIMIT = 20_000
CHUNK = 8192
#: IVF cells searched per item: the smallest of these whose recall on the sample reaches RECALL_TARGET.
NPROBES = (4, 8, 16)
RECALL_TARGET = 0.995
#: Items whose exact neighbours measure the IVF's recall.
RECALL_QUERIES = 1000


@dataclass
class EncodingAgreement:
    """What :func:`compare_encodings` found.

    Attributes:
        n: items in both encodings (the figures are over these).
        only_a, only_b: items in one encoding only (left out).
        k, metric, exact: the neighbourhoods compared (``exact``: brute force, else IVF).
        mean_overlap: mean Jaccard index of the two neighbour sets of an item.
        cka: linear CKA of the two encodings.
        per_item: ``id``, ``overlap`` (Jaccard), one row per common item, in A's order.
        search: how the neighbours were found, in words (``exact``, or the IVF's cells and nprobe).
        recall_a, recall_b: recall@k of the approximate neighbours in A and in B against exact ones,
            on ``recall_queries`` sampled items (1.0 and 0 for an exact search).
        sample_overlap, sample_overlap_exact: the mean overlap of those sampled items with the
            approximate and with exact neighbours (NaN for an exact search): their difference is the
            approximation's bias on ``mean_overlap``, within sampling noise.
    """

    n: int
    only_a: int
    only_b: int
    k: int
    metric: str
    exact: bool
    mean_overlap: float
    cka: float
    per_item: pd.DataFrame
    search: str = "exact"
    recall_a: float = 1.0
    recall_b: float = 1.0
    recall_queries: int = 0
    sample_overlap: float = float("nan")
    sample_overlap_exact: float = float("nan")

    def most_changed(self, m: int = 20) -> pd.DataFrame:
        """The ``m`` items whose neighbourhoods changed most (lowest overlap first; ties in A's order)."""
        return self.per_item.sort_values("overlap", kind="stable").head(m).reset_index(drop=True)


def _read(x) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(x, (str, os.PathLike)):
        from nenya.analysis.latents import read_latents

        ids, vectors, _ = read_latents(x)
        return np.asarray(ids, dtype=object), vectors
    ids, vectors = x
    return np.asarray(ids, dtype=object).astype(str).astype(object), np.asarray(vectors, dtype=np.float32)


def _join(ids_a: np.ndarray, ids_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the common ids in A and in B, in A's order."""
    for name, ids in (("A", ids_a), ("B", ids_b)):
        if len(pd.unique(ids)) != len(ids):
            raise ValueError(f"encoding {name} has repeated ids; compare encodings whose ids are unique")
    rows_b = pd.Index(ids_b).get_indexer(ids_a)
    rows_a = np.flatnonzero(rows_b >= 0)
    return rows_a, rows_b[rows_a]


def _without_self(rows: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` rows of each line other than the item itself (moved to the end, order kept)."""
    order = np.argsort(rows == items[:, None], axis=1, kind="stable")
    return np.take_along_axis(rows, order, axis=1)[:, :k]


def _exact_knn(x: np.ndarray, items: np.ndarray, k: int, fmetric: int) -> np.ndarray:
    """(len(items), k) exact neighbour rows of ``x[items]`` among all of ``x`` (FAISS brute force, BLAS)."""
    import faiss

    _, rows = faiss.knn(np.ascontiguousarray(x[items]), x, min(k + 1, len(x)), metric=fmetric)
    return _without_self(rows.astype(np.int64), items, k)


@dataclass
class _Found:
    rows: np.ndarray  # (n, k) neighbour rows, -1 where fewer
    search: str = "exact"
    recall: float = 1.0
    sample: np.ndarray | None = None  # the items whose exact neighbours were computed
    exact_rows: np.ndarray | None = None  # and those neighbours


def _neighbours(
    x: np.ndarray, k: int, metric: str, exact: bool, progress: bool, desc: str, sample: np.ndarray | None = None
) -> _Found:
    """Every item's ``k`` nearest other items: exact, or by IVF with its recall measured on ``sample``."""
    import faiss

    if metric == "cosine":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    x = np.ascontiguousarray(x, dtype=np.float32)
    fmetric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
    n = len(x)
    out = np.full((n, k), -1, dtype=np.int64)
    chunks = query_chunks(n, CHUNK)
    if exact:
        with chunk_bar(chunks, desc, progress) as bar:
            for s, e in chunks:
                out[s:e] = _exact_knn(x, np.arange(s, e), k, fmetric)
                bar.update(e - s)
        return _Found(out)
    sample = np.arange(n) if sample is None else sample
    truth = _exact_knn(x, sample, k, fmetric)
    cells = _Cells(x, chunks, progress, desc.replace("neighbours", "cells"))
    nprobe, recall = NPROBES[0], 0.0
    for nprobe in sorted({min(p, cells.nlist) for p in NPROBES}):  # the fewest cells that reach the target
        recall = _recall(cells.search(x, sample, nprobe, k, fmetric), truth)
        if recall >= RECALL_TARGET:
            break
    with chunk_bar(chunks, desc, progress) as bar:
        out = cells.search(x, np.arange(n), nprobe, k, fmetric, bar)
    how = f"IVF ({cells.nlist:,} cells, {nprobe} searched)"
    log.info("%s: %s, recall@%d %.4f on %d items", desc, how, k, recall, len(sample))
    return _Found(out, how, recall, sample, truth)


class _Cells:
    """An IVF partition of ``x`` searched with BLAS: about sqrt(n) k-means cells (trained on 39 items a
    cell in 10 rounds); the items of a cell search, exactly and together, the items of the ``nprobe``
    cells whose centres are nearest their cell's centre (one matrix product per cell instead of a
    scan per query)."""

    def __init__(self, x: np.ndarray, chunks: list[tuple[int, int]], progress: bool, desc: str) -> None:
        import faiss

        n, d = x.shape
        self.nlist = max(1, min(n // 39, int(np.sqrt(n))))
        km = faiss.Kmeans(d, self.nlist, niter=10, seed=1)
        km.train(x[np.sort(np.random.default_rng(0).choice(n, min(n, self.nlist * 39), replace=False))])
        self.home = np.empty(n, dtype=np.int64)
        with chunk_bar(chunks, desc, progress) as bar:
            for s, e in chunks:
                self.home[s:e] = km.index.search(x[s:e], 1)[1][:, 0]
                bar.update(e - s)
        self.order = np.argsort(self.home, kind="stable")
        self.bounds = np.searchsorted(self.home[self.order], np.arange(self.nlist + 1))
        # each cell's nearest cells (itself first), by their centres
        centres = np.asarray(km.centroids, dtype=np.float32)
        self.near = faiss.knn(centres, centres, min(max(NPROBES), self.nlist))[1]

    def search(self, x, items: np.ndarray, nprobe: int, k: int, fmetric: int, bar=None) -> np.ndarray:
        """(len(items), k) neighbour rows of ``x[items]`` among the items of ``nprobe`` cells."""
        import faiss

        out = np.full((len(items), k), -1, dtype=np.int64)
        by_cell = np.argsort(self.home[items], kind="stable")
        cells, starts = np.unique(self.home[items][by_cell], return_index=True)
        for cell, a, b in zip(cells, starts, [*starts[1:], len(items)]):
            where = by_cell[a:b]
            q = items[where]
            cand = np.concatenate([self.order[self.bounds[c] : self.bounds[c + 1]] for c in self.near[cell, :nprobe]])
            _, loc = faiss.knn(
                np.ascontiguousarray(x[q]), np.ascontiguousarray(x[cand]), min(k + 1, len(cand)), metric=fmetric
            )
            rows = np.where(loc >= 0, cand[np.clip(loc, 0, None)], -1)
            if rows.shape[1] < k + 1:
                rows = np.pad(rows, ((0, 0), (0, k + 1 - rows.shape[1])), constant_values=-1)
            out[where] = _without_self(rows, q, k)
            if bar is not None:
                bar.update(len(q))
        return out


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of the exact neighbours (>= 0) that ``found`` holds, row by row."""
    hit = ((found[:, :, None] == truth[:, None, :]) & (truth[:, None, :] >= 0)).any(axis=1).sum(axis=1)
    return float(hit.sum() / max(int((truth >= 0).sum()), 1))


def knn_overlap(na: np.ndarray, nb: np.ndarray) -> np.ndarray:
    """Jaccard index per row of two (n, k) neighbour-row arrays (-1 = no neighbour)."""
    overlap = np.zeros(len(na), dtype=np.float64)
    for s in range(0, len(na), CHUNK):
        a, b = na[s : s + CHUNK], nb[s : s + CHUNK]
        inter = ((a[:, :, None] == b[:, None, :]) & (a[:, :, None] >= 0)).any(axis=2).sum(axis=1)
        union = (a >= 0).sum(axis=1) + (b >= 0).sum(axis=1) - inter
        overlap[s : s + CHUNK] = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return overlap


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two (n, d1), (n, d2) arrays of the same items, in float64, chunk by chunk."""
    if len(x) != len(y):
        raise ValueError(f"CKA needs the same items: {len(x)} and {len(y)} rows")
    n = len(x)
    mx, my = x.mean(axis=0, dtype=np.float64), y.mean(axis=0, dtype=np.float64)
    xx = np.zeros((x.shape[1], x.shape[1]))
    yy = np.zeros((y.shape[1], y.shape[1]))
    xy = np.zeros((x.shape[1], y.shape[1]))
    for s in range(0, n, CHUNK):
        a = x[s : s + CHUNK].astype(np.float64) - mx
        b = y[s : s + CHUNK].astype(np.float64) - my
        xx += a.T @ a
        yy += b.T @ b
        xy += a.T @ b
    denom = np.linalg.norm(xx) * np.linalg.norm(yy)
    return float((xy**2).sum() / denom) if denom > 0 else float("nan")


def compare_encodings(
    a,
    b,
    *,
    k: int = 10,
    metric: str = "l2",
    exact_limit: int = EXACT_LIMIT,
    recall_queries: int = RECALL_QUERIES,
    progress: bool = True,
) -> EncodingAgreement:
    """How far two encodings of the same items agree: kNN overlap@k and linear CKA.

    Args:
        a, b: latents files of any layout nenya writes, or ``(ids, vectors)`` pairs.
        k: neighbours per item. metric: ``l2``, ``ip`` or ``cosine`` (as ``nenya index``).
        exact_limit: exact neighbours (brute force) up to this many common items, IVF beyond (0: always
            IVF; ``sys.maxsize``: always exact, whose time grows as n^2).
        recall_queries: sampled items whose exact neighbours measure the IVF's recall@k and the bias of
            the overlap (the same items in A and B).
        progress: progress bars for the neighbour searches (counting items; none for a search done
            in one chunk).

    Example:
        >>> r = compare_encodings("resnet50_latents.parquet", "effnet_latents.parquet", k=10)  # doctest: +SKIP
        >>> r.mean_overlap, r.cka, r.most_changed(5)                                            # doctest: +SKIP
    """
    ids_a, xa = _read(a)
    ids_b, xb = _read(b)
    rows_a, rows_b = _join(ids_a, ids_b)
    n = len(rows_a)
    if n < 2:
        raise ValueError(f"the encodings share {n} id(s); compare two encodings of the same items")
    if n < len(ids_a) or n < len(ids_b):
        log.warning("%d ids only in A and %d only in B are left out", len(ids_a) - n, len(ids_b) - n)
    xa, xb = np.ascontiguousarray(xa[rows_a]), np.ascontiguousarray(xb[rows_b])
    kk = min(int(k), n - 1)
    exact = n <= exact_limit
    sample = None if exact else np.sort(np.random.default_rng(0).choice(n, min(n, recall_queries), replace=False))
    fa = _neighbours(xa, kk, metric, exact, progress, "neighbours in A", sample)
    fb = _neighbours(xb, kk, metric, exact, progress, "neighbours in B", sample)
    overlap = knn_overlap(fa.rows, fb.rows)
    cka = linear_cka(xa, xb)
    log.info("%d common items: kNN overlap@%d %.4f, linear CKA %.4f", n, kk, overlap.mean(), cka)
    r = EncodingAgreement(
        n=n,
        only_a=len(ids_a) - n,
        only_b=len(ids_b) - n,
        k=kk,
        metric=metric,
        exact=exact,
        mean_overlap=float(overlap.mean()),
        cka=cka,
        per_item=pd.DataFrame({"id": ids_a[rows_a], "overlap": overlap}),
    )
    if sample is not None and fa.exact_rows is not None and fb.exact_rows is not None:
        r.search = fa.search if fa.search == fb.search else f"A: {fa.search}; B: {fb.search}"
        r.recall_a, r.recall_b, r.recall_queries = fa.recall, fb.recall, len(sample)
        r.sample_overlap = float(overlap[sample].mean())
        r.sample_overlap_exact = float(knn_overlap(fa.exact_rows, fb.exact_rows).mean())
        log.info(
            "recall@%d %.4f (A), %.4f (B) on %d items; their overlap %.4f, exact %.4f",
            kk, r.recall_a, r.recall_b, len(sample), r.sample_overlap, r.sample_overlap_exact,
        )  # fmt: skip
    return r

"""Agreement between two encodings of the same items: do the neighbourhoods survive a change of model,
checkpoint or precision?

Two figures, on the items both encodings hold (joined on id):

- **kNN overlap@k**: for every item, the Jaccard index of its ``k`` nearest neighbours (itself left
  out) under encoding A and under encoding B; the mean over items, and the items whose
  neighbourhoods changed most. Exact (FAISS flat) up to ``exact_limit`` items, HNSW beyond.
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

EXACT_LIMIT = 100_000
CHUNK = 8192


@dataclass
class EncodingAgreement:
    """What :func:`compare_encodings` found.

    Attributes:
        n: items in both encodings (the figures are over these).
        only_a, only_b: items in one encoding only (left out).
        k, metric, exact: the neighbourhoods compared (``exact``: FAISS flat, else HNSW).
        mean_overlap: mean Jaccard index of the two neighbour sets of an item.
        cka: linear CKA of the two encodings.
        per_item: ``id``, ``overlap`` (Jaccard), one row per common item, in A's order.
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


def _neighbours(x: np.ndarray, k: int, metric: str, exact: bool, progress: bool, desc: str) -> np.ndarray:
    """(n, k) rows of every item's ``k`` nearest other items (-1 where there are fewer)."""
    from nenya.analysis.search import build_index

    n = len(x)
    index = build_index(x, kind="flat" if exact else "hnsw", metric=metric, ef_search=max(128, 4 * k))
    out = np.full((n, k), -1, dtype=np.int64)
    chunks = query_chunks(n, CHUNK)
    with chunk_bar(chunks, desc, progress) as bar:
        for s, e in chunks:
            _, _, rows = index.search(x[s:e], k + 1)
            is_self = rows == np.arange(s, e)[:, None]
            # move the item itself (when found) to the end, keep the order of the others, keep k
            order = np.argsort(is_self, axis=1, kind="stable")
            out[s:e] = np.take_along_axis(rows, order, axis=1)[:, :k]
            bar.update(e - s)
    return out


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
    progress: bool = True,
) -> EncodingAgreement:
    """How far two encodings of the same items agree: kNN overlap@k and linear CKA.

    Args:
        a, b: latents files of any layout nenya writes, or ``(ids, vectors)`` pairs.
        k: neighbours per item. metric: ``l2``, ``ip`` or ``cosine`` (as ``nenya index``).
        exact_limit: exact neighbours (FAISS flat) up to this many common items, HNSW beyond.
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
    na = _neighbours(xa, kk, metric, exact, progress, "neighbours in A")
    nb = _neighbours(xb, kk, metric, exact, progress, "neighbours in B")
    overlap = knn_overlap(na, nb)
    cka = linear_cka(xa, xb)
    log.info("%d common items: kNN overlap@%d %.4f, linear CKA %.4f", n, kk, overlap.mean(), cka)
    return EncodingAgreement(
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

"""The memory-bounded search of :mod:`nenya.analysis.duplicates`: 8-bit codes, slab reads, exact re-check.

The vectors stay where they are (a memory-mapped ``.npy``, slabs of an HDF5 or Parquet file, or an array
the caller holds); the index keeps one byte per dimension (``faiss.IndexIVFScalarQuantizer``,
``QT_8bit``, or its flat form for an exhaustive search). Every dimension's code range is its min..max
over all vectors (one streaming pass), so no vector is clipped and each coordinate is reconstructed
within half a quantisation step ``h_j = range_j / 510``: a reconstructed vector lies within
``H = sqrt(sum_j h_j^2)`` of the true one, and by the triangle inequality every pair truly closer than
``r`` is within ``r + H`` of the query in code space. The range search uses that radius (squared,
with a relative slack of 1e-3 for float32 arithmetic), then every candidate pair is measured again in
float64 from the original vectors and kept only when its exact distance is under the threshold.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from nenya.analysis.progress import chunk_bar, query_chunks

log = logging.getLogger(__name__)

SLAB = 65_536  # rows read and added at a time
RECHECK = 262_144  # candidate pairs gathered before they are measured exactly (rows read at most 2x this)
SLACK = 1e-3  # relative widening of the squared radius for float32 rounding in FAISS's distances


def _prepare(x: np.ndarray, metric: str) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if metric == "cosine":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    elif metric != "l2":
        raise ValueError(f"unknown metric {metric!r}; expected l2 or cosine")
    return np.ascontiguousarray(x)


def _distance(xa: np.ndarray, xb: np.ndarray, metric: str) -> np.ndarray:
    """Exact distances in float64 (FAISS's float32 |a|^2 + |b|^2 - 2ab loses tiny distances to rounding)."""
    diff = xa.astype(np.float64) - xb.astype(np.float64)
    d2 = (diff**2).sum(axis=1)
    return np.sqrt(d2) if metric == "l2" else d2 / 2.0


class Rows:
    """(Shared with :mod:`nenya.analysis.shift`: collections of any size read as arrays or opened files.)
    Prepared (cosine: unit) float32 rows of an array or a :class:`~nenya.analysis.latents.Latents`,
    read on demand: ``slabs()`` in order, ``get(rows)`` any rows (a memory map or array: direct; an
    HDF5 or Parquet file: one pass over it)."""

    def __init__(self, source: Any, metric: str) -> None:
        self.source = source
        self.metric = metric
        self.n, self.dim = (source.n, source.dim) if hasattr(source, "iter_vectors") else source.shape
        self.n, self.dim = int(self.n), int(self.dim)

    def slabs(self, size: int = SLAB):
        """``(start, prepared rows)`` in row order, ``size`` rows at a time."""
        if hasattr(self.source, "iter_vectors"):
            for s, v in self.source.iter_vectors(size):
                yield s, _prepare(v, self.metric)
        else:
            for s in range(0, self.n, size):
                yield s, _prepare(self.source[s : s + size], self.metric)

    def get(self, rows: np.ndarray) -> np.ndarray:
        """The prepared rows ``rows`` (any order, repeats allowed)."""
        rows = np.asarray(rows, dtype=np.int64)
        if hasattr(self.source, "iter_vectors"):
            return _prepare(self.source.vectors(rows), self.metric)
        order = np.argsort(rows, kind="stable")  # sorted reads of a memory map
        out = np.empty((len(rows), self.dim), np.float32)
        out[order] = self.source[rows[order]]
        return _prepare(out, self.metric)

    def distance(self, a: np.ndarray, b: np.ndarray, block: int = 65_536) -> np.ndarray:
        """Exact float64 distances of the pairs (a[i], b[i]): the rows of ``RECHECK`` pairs read at a
        time (once each), measured ``block`` pairs at a time."""
        out = [np.zeros(0)]
        for p in range(0, len(a), RECHECK):
            pa, pb = np.asarray(a[p : p + RECHECK]), np.asarray(b[p : p + RECHECK])
            uniq, inv = np.unique(np.concatenate([pa, pb]), return_inverse=True)
            x = self.get(uniq)
            ia, ib = inv[: len(pa)], inv[len(pa) :]
            for s in range(0, len(pa), block):
                out.append(_distance(x[ia[s : s + block]], x[ib[s : s + block]], self.metric))
        return np.concatenate(out)


def sq8_index(rows: Rows, *, flat: bool, nprobe: int, seed: int = 0, progress: bool = False):
    """An 8-bit scalar-quantised FAISS L2 index over every row (flat or IVF), added slab by slab, and ``H``:
    the bound on how far a reconstructed vector lies from its original (see the module docstring).
    ``progress``: a bar over each pass (the ranges, then the codes)."""
    import faiss
    from tqdm.auto import tqdm

    n, d = rows.n, rows.dim
    qt = faiss.ScalarQuantizer.QT_8bit
    rng = np.random.default_rng(seed)
    # cells as the IVFFlat of duplicates._index (one cell: exhaustive; FAISS's flat SQ range search is far
    # slower than scanning one inverted list); codes of the vectors themselves, not of residuals, so that
    # one range per dimension (set below) covers every vector
    nlist = 1 if flat else int(max(1, min(n // 39, 4 * np.sqrt(n))))
    index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatL2(d), d, nlist, qt, faiss.METRIC_L2, False)
    index.cp.niter = 10
    index.nprobe = max(1, min(nlist, nprobe))
    sample = np.sort(rng.choice(n, min(n, max(nlist * 39, 4096)), replace=False))
    index.train(rows.get(sample))
    lo = np.full(d, np.inf, np.float32)
    hi = np.full(d, -np.inf, np.float32)
    with tqdm(total=n, desc="8-bit codes: ranges", unit="vec", disable=not progress) as bar:
        for _, v in rows.slabs():
            lo, hi = np.minimum(lo, v.min(axis=0)), np.maximum(hi, v.max(axis=0))
            bar.update(len(v))
    span = np.maximum(hi - lo, 1e-30).astype(np.float32)
    faiss.copy_array_to_vector(np.concatenate([lo, span]).astype(np.float32), index.sq.trained)
    with tqdm(total=n, desc="8-bit codes: coding", unit="vec", disable=not progress) as bar:
        for _, v in rows.slabs():
            index.add(v)
            bar.update(len(v))
    bound = float(np.sqrt(((span.astype(np.float64) / 510.0) ** 2).sum()))
    return index, bound


def sq8_pairs(rows: Rows, index, bound: float, threshold: float, radius2: float, progress: bool):
    """(rows a, rows b, exact distances) of every pair a < b with exact distance under ``threshold``
    (``radius2``: its squared L2 radius): an SQ8 range search widened by ``bound``, then an exact re-check."""
    radius = (np.sqrt(radius2) + bound) ** 2 * (1 + SLACK) + 1e-12
    out: list[tuple[np.ndarray, ...]] = []
    cand_a: list[np.ndarray] = []
    cand_b: list[np.ndarray] = []
    held = 0

    def recheck() -> None:
        nonlocal held
        if cand_a:
            a, b = np.concatenate(cand_a), np.concatenate(cand_b)
            d = rows.distance(a, b)
            keep = d < threshold
            out.append((a[keep], b[keep], d[keep]))
        cand_a.clear()
        cand_b.clear()
        held = 0

    chunks = query_chunks(rows.n, 8192)
    with chunk_bar(chunks, "near-duplicate search", progress) as bar:
        for s, q in rows.slabs(8192):
            lims, _, hit = index.range_search(q, float(radius))
            owner = np.repeat(np.arange(s, s + len(q)), np.diff(lims.astype(np.int64)))
            keep = hit > owner  # each pair once, never an item with itself
            cand_a.append(owner[keep])
            cand_b.append(hit[keep].astype(np.int64))
            held += int(keep.sum())
            if held >= RECHECK:
                recheck()
            bar.update(len(q))
    recheck()
    if not out:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    a, b, d = (np.concatenate(c) for c in zip(*out))
    order = np.lexsort((b, a))
    return a[order], b[order], d[order]


def nearest_distances(rows: Rows, index, sample: np.ndarray, k: int) -> np.ndarray:
    """Each sampled row's exact distance to the nearest other row among its ``k`` nearest in the index
    (the codes' order is approximate; the distance is measured again in float64), sorted."""
    q = rows.get(sample)
    _, nn = index.search(q, k)
    a = np.repeat(sample, k)
    b = nn.reshape(-1).astype(np.int64)
    ok = (b >= 0) & (b != a)
    d = np.full(len(a), np.inf)
    d[ok] = rows.distance(a[ok], b[ok])
    best = d.reshape(len(sample), k).min(axis=1)
    return np.sort(best[np.isfinite(best)])

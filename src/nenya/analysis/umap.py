"""UMAP of latent vectors: fit on a random sample, then place every vector in slabs (bounded memory)."""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from nenya.analysis.latents import Latents

log = logging.getLogger(__name__)

__all__ = ["UMAPResult", "fit_umap", "transform_chunked", "make_umap"]


@dataclass
class UMAPResult:
    """The 2-D embedding (N, 2) float32, the fitted ``umap.UMAP`` and the rows it was fitted on."""

    embedding: np.ndarray
    reducer: Any
    train_rows: np.ndarray


def _cache_numba() -> None:
    """Let numba cache umap-learn's compiled functions on disk (numba's ``cache=True``, which
    umap-learn does not set): compiling them costs 20-40 s in every new process on a small
    machine, a cached load about 1 s. Opt out with ``NENYA_NUMBA_CACHE=0``. The cache lives where
    numba puts it (``__pycache__`` beside umap's modules, else ``NUMBA_CACHE_DIR``)."""
    global _NUMBA_CACHED
    if _NUMBA_CACHED or os.environ.get("NENYA_NUMBA_CACHE", "1") == "0":
        return
    _NUMBA_CACHED = True
    try:
        import importlib

        from numba.core.caching import NullCache
        from numba.core.dispatcher import Dispatcher

        for name in (
            "umap.umap_",
            "umap.layouts",
            "umap.utils",
            "umap.distances",
            "umap.sparse",
            "umap.spectral",
            "pynndescent.pynndescent_",
            "pynndescent.utils",
            "pynndescent.distances",
            "pynndescent.rp_trees",
            "pynndescent.sparse",
        ):
            try:
                module = importlib.import_module(name)
            except ImportError:
                continue
            for obj in list(vars(module).values()):
                if isinstance(obj, Dispatcher) and isinstance(obj._cache, NullCache):  # type: ignore[attr-defined]  # numba internals, guarded by the except below
                    obj.enable_caching()
    except Exception as e:  # a numba without these internals: just compile as usual
        log.debug("numba caching not enabled: %s", e)


_NUMBA_CACHED = False


_CLASS: Any = None


def _umap_class():
    global _CLASS
    if _CLASS is None:
        import umap

        class NenyaUMAP(umap.UMAP):
            """umap.UMAP whose exact small-data path uses sklearn's euclidean distances."""

            def _validate_parameters(self):
                super()._validate_parameters()
                if self.metric in ("euclidean", "l2") and not self._sparse_data:
                    self._input_distance_func = "euclidean"

        NenyaUMAP.__module__ = __name__
        NenyaUMAP.__qualname__ = "NenyaUMAP"
        globals()["NenyaUMAP"] = NenyaUMAP
        _CLASS = NenyaUMAP
    return _CLASS


def __getattr__(name: str):  # lets pickle find NenyaUMAP (defined on first use: umap-learn imports slowly)
    if name == "NenyaUMAP":
        return _umap_class()
    raise AttributeError(name)


def make_umap(
    *,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    seed: int | None = 42,
    metric: str = "euclidean",
    n_epochs: int | None = None,
) -> Any:
    """``umap.UMAP`` with Nenya's settings (2 components, euclidean, ``random_state=42``).

    For fewer than 4096 points umap-learn computes all pairwise distances; the returned model has
    it do so with scikit-learn's vectorised euclidean distance instead of a per-pair Python
    callback (same distances, ~10-20 s less for 2,000 points). It pickles as ``umap.UMAP`` does.
    """

    _cache_numba()
    return _umap_class()(
        n_neighbors=n_neighbors, min_dist=min_dist, n_components=2, metric=metric, random_state=seed, n_epochs=n_epochs
    )


def transform_chunked(
    reducer: Any, data: np.ndarray | Latents, *, chunk: int = 50_000, rows: np.ndarray | None = None
) -> np.ndarray:
    """``reducer.transform`` over slabs of ``chunk`` rows (all rows, or only ``rows`` of an array)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value.*")
        if isinstance(data, Latents) and rows is None:
            out = np.empty((data.n, 2), np.float32)
            for a, v in data.iter_vectors(chunk):
                out[a : a + len(v)] = reducer.transform(v)
            return out
        idx = np.arange(len(data)) if rows is None else np.asarray(rows)
        out = np.empty((len(idx), 2), np.float32)
        for a in range(0, len(idx), chunk):
            part = idx[a : a + chunk]
            v = data.vectors(part) if isinstance(data, Latents) else np.asarray(data[part], dtype=np.float32)
            out[a : a + len(part)] = reducer.transform(v)
        return out


def fit_umap(
    data: np.ndarray | Latents,
    *,
    ntrain: int = 200_000,
    chunk: int = 50_000,
    transform_all: bool = False,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    seed: int = 42,
    n_epochs: int | None = None,
) -> UMAPResult:
    """Fit UMAP on at most ``ntrain`` randomly chosen vectors and embed all of them.

    Rows in the fitted sample take their fitted coordinates (``embedding_``) unless
    ``transform_all`` (Nenya's way: every row through ``transform``, slower); the others are
    transformed ``chunk`` rows at a time, so memory stays bounded by ``ntrain + chunk`` vectors.

    Args:
        data: (N, D) array or an opened :class:`~nenya.analysis.latents.Latents`.
        ntrain: the largest sample to fit on (Nenya: 200,000).
        chunk: rows per ``transform`` call.
        transform_all: pass the fitted rows through ``transform`` too.
        n_neighbors, min_dist, seed, n_epochs: UMAP settings (Nenya's defaults).

    Returns:
        A :class:`UMAPResult`.
    """
    n = data.n if isinstance(data, Latents) else len(data)
    if n < 3:
        raise ValueError(f"UMAP needs at least 3 vectors; got {n}")
    rng = np.random.default_rng(seed)
    ntrain = min(int(ntrain), n)
    train_rows = np.sort(rng.choice(n, size=ntrain, replace=False)) if ntrain < n else np.arange(n)
    x = data.vectors(train_rows) if isinstance(data, Latents) else np.asarray(data[train_rows], dtype=np.float32)
    reducer = make_umap(n_neighbors=min(n_neighbors, ntrain - 1), min_dist=min_dist, seed=seed, n_epochs=n_epochs)
    log.info("fitting UMAP on %d of %d vectors", ntrain, n)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value.*")
        reducer.fit(x)
    del x
    if transform_all:
        emb = transform_chunked(reducer, data, chunk=chunk)
    else:
        emb = np.empty((n, 2), np.float32)
        emb[train_rows] = reducer.embedding_
        rest = np.setdiff1d(np.arange(n), train_rows, assume_unique=True)
        if len(rest):
            log.info("placing the other %d vectors with transform", len(rest))
            emb[rest] = transform_chunked(reducer, data, chunk=chunk, rows=rest)
    return UMAPResult(emb, reducer, train_rows)

"""Clusters of latent vectors: k-means (mini-batch for large sets) and HDBSCAN."""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["kmeans", "hdbscan", "MINIBATCH_ABOVE"]

#: Above this many vectors, :func:`kmeans` uses ``MiniBatchKMeans``.
MINIBATCH_ABOVE = 50_000


def kmeans(
    vectors: np.ndarray, k: int, *, minibatch: bool | None = None, seed: int = 0, batch_size: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """k-means labels (N,) int and centres (k, D).

    Args:
        vectors: (N, D) float array.
        k: number of clusters (2 <= k <= N).
        minibatch: use ``MiniBatchKMeans``; None chooses it above :data:`MINIBATCH_ABOVE` vectors.
        seed: random state.
        batch_size: mini-batch size.
    """
    from sklearn.cluster import KMeans, MiniBatchKMeans

    n = len(vectors)
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of vectors ({n}); got {k}")
    if minibatch is None:
        minibatch = n > MINIBATCH_ABOVE
    if minibatch:
        model = MiniBatchKMeans(n_clusters=k, random_state=seed, batch_size=batch_size, n_init=3)
    else:
        model = KMeans(n_clusters=k, random_state=seed, n_init=4)
    labels = model.fit_predict(np.asarray(vectors, dtype=np.float32))
    return labels.astype(np.int32), model.cluster_centers_.astype(np.float32)


def hdbscan(vectors: np.ndarray, *, min_cluster_size: int = 15, min_samples: int | None = None) -> np.ndarray:
    """HDBSCAN labels (N,) int; -1 marks noise. Cost grows fast with N and D: reduce first
    (``nenya cluster --pca 10`` or cluster the UMAP plane) for more than ~50,000 vectors."""
    from sklearn.cluster import HDBSCAN

    n = len(vectors)
    if n > 100_000:
        log.warning("HDBSCAN on %d vectors can take very long; consider --pca or a sample", n)
    model = HDBSCAN(min_cluster_size=min_cluster_size, min_samples=min_samples, copy=True)
    return model.fit_predict(np.asarray(vectors, dtype=np.float64)).astype(np.int32)

"""Principal components of latent vectors: exact for small sets, incremental (streamed) for large ones."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from nenya.analysis.latents import Latents

log = logging.getLogger(__name__)

__all__ = ["PCAResult", "pca", "INCREMENTAL_ABOVE"]

#: Above this many vectors, :func:`pca` streams the file through ``IncrementalPCA``.
INCREMENTAL_ABOVE = 200_000


@dataclass(frozen=True)
class PCAResult:
    """Components (n_components, D), mean (D,), explained variance and its ratio, and the scores (N, n_components)."""

    components: np.ndarray
    mean: np.ndarray
    explained_variance: np.ndarray
    explained_variance_ratio: np.ndarray
    scores: np.ndarray
    incremental: bool


def pca(
    data: np.ndarray | Latents,
    n_components: int = 10,
    *,
    incremental: bool | None = None,
    batch_size: int = 50_000,
    seed: int = 0,
) -> PCAResult:
    """Project latent vectors on their first principal components.

    Args:
        data: an (N, D) array, or an opened :class:`~nenya.analysis.latents.Latents` (streamed).
        n_components: number of components (at most D).
        incremental: use sklearn's ``IncrementalPCA`` on slabs of ``batch_size`` rows (bounded
            memory); None chooses it above :data:`INCREMENTAL_ABOVE` vectors.
        batch_size: rows per slab for the incremental fit and the projection.
        seed: random state of the exact solver.

    Returns:
        A :class:`PCAResult`; ``explained_variance_ratio`` is relative to the total variance.

    Example:
        >>> res = pca(np.random.default_rng(0).standard_normal((500, 16)), 4)
        >>> res.scores.shape
        (500, 4)
    """
    from sklearn.decomposition import PCA, IncrementalPCA

    n, dim = (data.n, data.dim) if isinstance(data, Latents) else np.shape(data)
    if not 1 <= n_components <= min(n, dim):
        raise ValueError(f"n_components must be between 1 and min(N, D) = {min(n, dim)}; got {n_components}")
    if incremental is None:
        incremental = n > INCREMENTAL_ABOVE

    def slabs():
        if isinstance(data, Latents):
            yield from data.iter_vectors(batch_size)
        else:
            for a in range(0, n, batch_size):
                yield a, np.asarray(data[a : a + batch_size], dtype=np.float32)

    if incremental:
        model = IncrementalPCA(n_components=n_components, batch_size=batch_size)
        carry = None
        for _, v in slabs():
            # every partial_fit needs at least n_components rows: merge a short tail into the next slab
            v = v if carry is None else np.concatenate([carry, v])
            if len(v) < n_components:
                carry = v
                continue
            model.partial_fit(v)
            carry = None
        if carry is not None:
            model.partial_fit(carry)
    else:
        x = data.vectors() if isinstance(data, Latents) else np.asarray(data, dtype=np.float32)
        model = PCA(n_components=n_components, random_state=seed).fit(x)
    scores = np.empty((n, n_components), np.float32)
    for a, v in slabs():
        scores[a : a + len(v)] = model.transform(v)
    log.info(
        "PCA of %d x %d: first %d components explain %.3f of the variance",
        n,
        dim,
        n_components,
        float(np.sum(model.explained_variance_ratio_)),
    )
    return PCAResult(
        model.components_.astype(np.float32),
        model.mean_.astype(np.float32),
        np.asarray(model.explained_variance_, dtype=np.float64),
        np.asarray(model.explained_variance_ratio_, dtype=np.float64),
        scores,
        bool(incremental),
    )

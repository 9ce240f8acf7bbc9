"""Shift between two collections in latent space: do B's vectors land where A's do?

Three views of the same question, on vectors made by the same model:

- **MMD²** (Gretton et al., 2012) with a Gaussian kernel ``exp(-|x - y|² / (2 σ²))``, ``σ`` the
  median pairwise distance of the pooled sample (up to 1,000 points), on up to ``sample`` items per
  side. The reported value is the unbiased estimate; the p-value comes from ``permutations`` random
  relabellings of the pooled sample, all evaluated at once: with ``S`` the (n, P) matrix of signed
  label weights (``1/n_A`` or ``-1/n_B``), each permutation's (biased) statistic is a column of
  ``S * (K S)`` summed, and ``K`` is formed one block of rows at a time, so memory holds
  ``block x n`` kernel values and ``n x P`` weights, never ``n x n``.
- **Classifier two-sample test** (Lopez-Paz & Oquab, 2017): logistic regression on standardised
  vectors, fitted on half of equal-sized samples of A and B, tells them apart on the held-out half;
  its accuracy there is compared with chance by a one-sided binomial test
  (``P[Binomial(n, 1/2) >= correct]``).
- **Cluster shares**: k-means on the union; each cluster's share of A and of B, a two-proportion
  z-test per cluster (with Benjamini-Hochberg q-values), sorted by the size of the difference, with
  the ids nearest each centre as examples. Above ``KMEANS_SAMPLE`` items in the union, k-means is
  fitted on that many drawn from the union and every item is then given its nearest centre, slab by
  slab from the files (memory-mapped or read in slabs): collections of millions never sit in memory.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from nenya._errors import InputError
from nenya.analysis.duplicates_index import Rows
from nenya.analysis.progress import Stages

log = logging.getLogger(__name__)

__all__ = [
    "CollectionShift",
    "compare_collections",
    "mmd_test",
    "classifier_test",
    "cluster_shares",
    "streamed_shares",
    "check_same_model",
]

SAMPLE = 2500
PERMUTATIONS = 1000
CLUSTERS = 20
EXAMPLES = 6
BANDWIDTH_SAMPLE = 1000
BLOCK = 1024
#: Above this many items in the union, k-means is fitted on this many of them (and all are assigned).
KMEANS_SAMPLE = 500_000
SLAB = 65_536


@dataclass
class CollectionShift:
    """What :func:`compare_collections` found (B compared with A).

    Attributes:
        names: the two collections' names; n_a, n_b: their sizes; sample_a, sample_b: the items the
            two tests used (at most ``sample`` per side, drawn at random).
        mmd2, mmd_p, bandwidth, permutations: the MMD test (unbiased MMD², permutation p-value,
            kernel width σ, number of permutations).
        accuracy, classifier_p, classifier_n: the classifier test (held-out accuracy, binomial
            p-value, held-out items).
        clusters: one row per k-means cluster: ``cluster``, ``n_a``, ``n_b``, ``share_a``,
            ``share_b``, ``difference`` (share_b - share_a), ``log2_ratio`` (with half-count
            smoothing), ``z``, ``p_value``, ``q_value``, ``examples_a``, ``examples_b`` (ids nearest
            the centre); largest absolute difference first.
        ids_a, ids_b, labels_a, labels_b: every item's id and cluster.
        rows_a, rows_b: the rows of A and of B in the tests' sample.
    """

    names: tuple[str, str]
    n_a: int
    n_b: int
    sample_a: int
    sample_b: int
    mmd2: float
    mmd_p: float
    bandwidth: float
    permutations: int
    accuracy: float
    classifier_p: float
    classifier_n: int
    clusters: pd.DataFrame
    ids_a: np.ndarray = field(repr=False)
    ids_b: np.ndarray = field(repr=False)
    labels_a: np.ndarray = field(repr=False)
    labels_b: np.ndarray = field(repr=False)
    rows_a: np.ndarray = field(repr=False)
    rows_b: np.ndarray = field(repr=False)

    def over_represented(self, m: int = 5) -> pd.DataFrame:
        """The ``m`` clusters where B is most over-represented relative to A."""
        return self.clusters.sort_values("difference", ascending=False, kind="stable").head(m).reset_index(drop=True)

    def under_represented(self, m: int = 5) -> pd.DataFrame:
        """The ``m`` clusters where B is most under-represented relative to A."""
        return self.clusters.sort_values("difference", kind="stable").head(m).reset_index(drop=True)

    def summary(self) -> dict:
        """The figures as plain JSON."""
        return {
            "a": self.names[0],
            "b": self.names[1],
            "n_a": self.n_a,
            "n_b": self.n_b,
            "sample_a": self.sample_a,
            "sample_b": self.sample_b,
            "mmd2": self.mmd2,
            "mmd_p": self.mmd_p,
            "bandwidth": self.bandwidth,
            "permutations": self.permutations,
            "classifier_accuracy": self.accuracy,
            "classifier_p": self.classifier_p,
            "classifier_n": self.classifier_n,
            "clusters": len(self.clusters),
        }


def median_bandwidth(z: np.ndarray, *, sample: int = BANDWIDTH_SAMPLE, seed: int = 0) -> float:
    """The median distance between distinct pairs of (up to ``sample``) rows of ``z``."""
    rng = np.random.default_rng(seed)
    s = z if len(z) <= sample else z[rng.choice(len(z), sample, replace=False)]
    s = s.astype(np.float64)
    sq = (s * s).sum(axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * s @ s.T, 0)
    iu = np.triu_indices(len(s), k=1)
    med = float(np.sqrt(np.median(d2[iu]))) if len(iu[0]) else 0.0
    return med if med > 0 else 1.0


def mmd_test(
    x: np.ndarray,
    y: np.ndarray,
    *,
    permutations: int = PERMUTATIONS,
    bandwidth: float | None = None,
    seed: int = 0,
    block: int = BLOCK,
    progress: bool = False,
) -> tuple[float, float, float]:
    """Gaussian-kernel MMD² of two samples with a permutation p-value.

    Returns:
        ``(mmd2, p_value, bandwidth)``: the unbiased MMD² estimate, ``(1 + #{perm >= observed}) /
        (1 + permutations)`` on the biased statistic, and the kernel width σ used.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    na, nb = len(x), len(y)
    if na < 2 or nb < 2:
        raise ValueError(f"MMD needs at least 2 items per side; got {na} and {nb}")
    z = np.concatenate([x, y])
    n = na + nb
    sigma = float(bandwidth) if bandwidth else median_bandwidth(z, seed=seed)
    rng = np.random.default_rng(seed)
    is_a = np.zeros(n, dtype=bool)
    is_a[:na] = True
    labels = np.empty((n, permutations + 1), dtype=bool)
    labels[:, 0] = is_a
    for j in range(permutations):
        labels[:, j + 1] = is_a[rng.permutation(n)]
    # columns: the observed and permuted signed weights, then the indicators of A and of B
    w = np.where(labels, 1.0 / na, -1.0 / nb)
    w = np.concatenate([w, is_a[:, None].astype(np.float64), (~is_a)[:, None].astype(np.float64)], axis=1)
    sq = (z * z).sum(axis=1)
    stats = np.zeros(permutations + 1)
    saa = sab = sbb = 0.0
    for s in tqdm(range(0, n, block), desc="MMD permutations", unit="block", disable=not progress, leave=False):
        e = min(s + block, n)
        k = np.exp(-np.maximum(sq[s:e, None] + sq[None, :] - 2 * z[s:e] @ z.T, 0) / (2 * sigma**2))
        kw = k @ w
        stats += (w[s:e, : permutations + 1] * kw[:, : permutations + 1]).sum(axis=0)
        saa += float(w[s:e, -2] @ kw[:, -2])
        sab += float(w[s:e, -2] @ kw[:, -1])
        sbb += float(w[s:e, -1] @ kw[:, -1])
    mmd2: float = (saa - na) / (na * (na - 1)) + (sbb - nb) / (nb * (nb - 1)) - 2 * sab / (na * nb)
    # ties count against rejection: a permutation equal to the observed statistic (up to rounding) counts
    p = (1 + int((stats[1:] >= stats[0] - 1e-12 * abs(stats[0])).sum())) / (1 + permutations)
    return float(mmd2), float(p), sigma


def classifier_test(x: np.ndarray, y: np.ndarray, *, holdout: float = 0.5, seed: int = 0) -> tuple[float, float, int]:
    """Classifier two-sample test: can logistic regression tell A from B?

    The larger side is subsampled to the smaller, so chance is 1/2. The classifier is fitted on a
    stratified ``1 - holdout`` share and scored on the held-out rest, whose predictions are then
    independent given the fit: under the null the count correct is at most as spread as
    ``Binomial(n, 1/2)``. (Pooled cross-validated predictions are not independent; on null splits
    their binomial p-values rejected 10.5% of the time at 0.05.)

    Returns:
        ``(accuracy, p_value, n)``: the held-out accuracy over ``n`` items and
        ``P[Binomial(n, 1/2) >= correct]``.
    """
    from scipy.stats import binom
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    m = min(len(x), len(y))
    if m < 4:
        raise ValueError(f"the classifier test needs at least 4 items per side; got {len(x)} and {len(y)}")
    xs = x if len(x) == m else x[np.sort(rng.choice(len(x), m, replace=False))]
    ys = y if len(y) == m else y[np.sort(rng.choice(len(y), m, replace=False))]
    data = np.concatenate([xs, ys]).astype(np.float64)
    target = np.r_[np.zeros(m, dtype=np.int8), np.ones(m, dtype=np.int8)]
    fit_x, test_x, fit_y, test_y = train_test_split(data, target, test_size=holdout, stratify=target, random_state=seed)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(fit_x, fit_y)
    correct = int((model.predict(test_x) == test_y).sum())
    n = len(test_y)
    return correct / n, float(binom.sf(correct - 1, n, 0.5)), n


def _bh(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values."""
    n = len(p)
    order = np.argsort(p)
    q = p[order] * n / np.arange(1, n + 1)
    q = np.minimum.accumulate(q[::-1])[::-1]
    out = np.empty(n)
    out[order] = np.minimum(q, 1.0)
    return out


def _examples(vectors: np.ndarray, labels: np.ndarray, centres: np.ndarray, ids: np.ndarray, m: int) -> list[list]:
    """Per cluster, the ids of up to ``m`` items nearest its centre."""
    out: list[list] = []
    for c in range(len(centres)):
        rows = np.flatnonzero(labels == c)
        if not len(rows):
            out.append([])
            continue
        d = ((vectors[rows] - centres[c]) ** 2).sum(axis=1)
        out.append([str(i) for i in ids[rows[np.argsort(d, kind="stable")[:m]]]])
    return out


def cluster_shares(
    xa: np.ndarray,
    xb: np.ndarray,
    *,
    k: int = CLUSTERS,
    seed: int = 0,
    ids_a: np.ndarray | None = None,
    ids_b: np.ndarray | None = None,
    examples: int = EXAMPLES,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """k-means on the union of A and B; each cluster's shares and their test.

    Returns ``(table, labels_a, labels_b)``; the table is sorted by absolute share difference.
    """
    from nenya.analysis.cluster import kmeans

    na, nb = len(xa), len(xb)
    k = max(1, min(int(k), na + nb))
    labels, centres = kmeans(np.concatenate([xa, xb]), k, seed=seed)
    la, lb = labels[:na], labels[na:]
    ids_a = np.arange(na).astype(str) if ids_a is None else np.asarray(ids_a)
    ids_b = np.arange(nb).astype(str) if ids_b is None else np.asarray(ids_b)
    ex = (_examples(xa, la, centres, ids_a, examples), _examples(xb, lb, centres, ids_b, examples))
    return _share_table(la, lb, k, ex), la, lb


def _share_table(la: np.ndarray, lb: np.ndarray, k: int, examples: tuple[list, list]) -> pd.DataFrame:
    """Each cluster's counts and shares in A and B, their z-test and q-value, sorted by |difference|."""
    from scipy.stats import norm

    na, nb = len(la), len(lb)
    ca = np.bincount(la, minlength=k).astype(np.float64)
    cb = np.bincount(lb, minlength=k).astype(np.float64)
    pa, pb = ca / na, cb / nb
    pooled = (ca + cb) / (na + nb)
    se = np.sqrt(pooled * (1 - pooled) * (1 / na + 1 / nb))
    z = np.divide(pb - pa, se, out=np.zeros(k), where=se > 0)
    p = 2 * norm.sf(np.abs(z))
    table = pd.DataFrame(
        {
            "cluster": np.arange(k, dtype=np.int32),
            "n_a": ca.astype(np.int64),
            "n_b": cb.astype(np.int64),
            "share_a": pa,
            "share_b": pb,
            "difference": pb - pa,
            "log2_ratio": np.log2(((cb + 0.5) / (nb + 0.5)) / ((ca + 0.5) / (na + 0.5))),
            "z": z,
            "p_value": p,
            "q_value": _bh(p),
            "examples_a": examples[0],
            "examples_b": examples[1],
        }
    )
    order = np.argsort(-np.abs(table["difference"].to_numpy()), kind="stable")
    return table.iloc[order].reset_index(drop=True)


def streamed_shares(
    a, b, *, k: int = CLUSTERS, seed: int = 0, ids_a=None, ids_b=None, examples: int = EXAMPLES,
    fit_sample: int = KMEANS_SAMPLE, progress: bool = False,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:  # fmt: skip
    """:func:`cluster_shares` for collections of any size: ``a`` and ``b`` are arrays or opened
    :class:`~nenya.analysis.latents.Latents`; k-means is fitted on ``fit_sample`` items drawn from the
    union (all of them, in order, when it holds fewer: then the clusters are cluster_shares'), and every
    item is given its nearest centre slab by slab, keeping each cluster's ``examples`` nearest items."""
    from nenya.analysis.cluster import kmeans

    na, nb = len(ids_a), len(ids_b)
    k = max(1, min(int(k), na + nb))
    rng = np.random.default_rng(seed)
    rows = np.arange(na + nb) if na + nb <= fit_sample else np.sort(rng.choice(na + nb, fit_sample, replace=False))
    fit = np.concatenate([Rows(a, "l2").get(rows[rows < na]), Rows(b, "l2").get(rows[rows >= na] - na)])
    _, centres = kmeans(fit, k, seed=seed)
    del fit
    (la, ea), (lb, eb) = (_assign(x, ids, centres, examples, progress) for x, ids in ((a, ids_a), (b, ids_b)))
    return _share_table(la, lb, k, (ea, eb)), la, lb


def _assign(x, ids: np.ndarray, centres: np.ndarray, m: int, progress: bool) -> tuple[np.ndarray, list[list]]:
    """Each item's nearest centre, slab by slab, and per cluster the ids of the ``m`` items nearest it
    (ties in file order, as :func:`_examples`)."""
    labels = np.empty(len(ids), np.int32)
    best = (np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64))  # label, distance, row
    c2 = (centres.astype(np.float64) ** 2).sum(axis=1)
    with tqdm(total=len(ids), desc="assigning clusters", unit="vec", disable=not progress) as bar:
        for a, v in Rows(x, "l2").slabs(SLAB):
            lab = np.argmin(c2[None, :] - 2.0 * (v.astype(np.float64) @ centres.T.astype(np.float64)), axis=1)
            labels[a : a + len(v)] = lab
            d = ((v - centres[lab]) ** 2).sum(axis=1)
            lab_all, d_all = np.concatenate([best[0], lab]), np.concatenate([best[1], d])
            row_all = np.concatenate([best[2], np.arange(a, a + len(v))])
            order = np.lexsort((row_all, d_all, lab_all))
            lab_s = lab_all[order]
            first = np.searchsorted(lab_s, lab_s, side="left")
            keep = order[np.arange(len(order)) - first < m]
            best = (lab_all[keep], d_all[keep], row_all[keep])
            bar.update(len(v))
    out: list[list] = [[] for _ in range(len(centres))]
    for lab, row in zip(best[0], best[2]):
        out[int(lab)].append(str(ids[row]))
    return labels, out


_RECORD_KEYS = ("model", "opts", "options", "dim", "grid", "precision", "preprocess")


def model_difference(ra: dict, rb: dict) -> str | None:
    """How two model records differ (None: the same model): the ``vectors`` digest (a hash of the
    weights, the preprocessing and the precision, so the same checkpoint at another path still
    agrees), or for records without one, the model, options, dimension, grid, precision and
    preprocessing."""
    diff = [key for key in _RECORD_KEYS if ra.get(key) != rb.get(key)]
    same = ra["vectors"] == rb["vectors"] if "vectors" in ra and "vectors" in rb else not diff
    if same:
        return None
    what = ", ".join(f"{key}: {ra.get(key)!r} vs {rb.get(key)!r}" for key in diff) or "the model weights"
    return f"{what}; vectors digest {ra.get('vectors')} vs {rb.get('vectors')}"


def check_same_model(a: str, b: str) -> None:
    """Raise :class:`~nenya._errors.InputError` unless the records of two latents files say the same
    model made both (:func:`model_difference`)."""
    from nenya.analysis.latents import read_about

    ra, rb = read_about(a), read_about(b)
    force = "pass --force to compare them anyway"
    if ra is None or rb is None:
        which = " and ".join(p for p, r in ((a, ra), (b, rb)) if r is None)
        raise InputError(f"{which} has no record of the model that made it, so nenya cannot check; {force}")
    what = model_difference(ra, rb)
    if what is not None:
        raise InputError(
            f"{a} and {b} were made by different models ({what}); their vectors are not comparable. Compare "
            f"encodings of the same items with --same-items, or {force}"
        )


def _load(x, name: str) -> tuple[str, np.ndarray, object]:
    """(name, ids, vectors): a file is opened, its vectors read only as needed (an opened Latents)."""
    from nenya.analysis.latents import Latents, open_latents, output_path

    if isinstance(x, (str, os.PathLike)):
        x = open_latents(str(x), metadata=False)
    if isinstance(x, Latents):
        return os.path.basename(output_path(x.path, "")), np.asarray(x.ids, dtype=object), x
    ids, vectors = x
    return name, np.asarray(ids).astype(str).astype(object), np.asarray(vectors, dtype=np.float32)


def _dim(x) -> int:
    return int(x.dim) if hasattr(x, "dim") and not isinstance(x, np.ndarray) else int(x.shape[1])


def _sample(n: int, m: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(n) if n <= m else np.sort(rng.choice(n, m, replace=False))


def compare_collections(
    a,
    b,
    *,
    sample: int = SAMPLE,
    permutations: int = PERMUTATIONS,
    clusters: int = CLUSTERS,
    holdout: float = 0.5,
    seed: int = 0,
    force: bool = False,
    names: tuple[str, str] | None = None,
    progress: bool = True,
) -> CollectionShift:
    """Does collection B differ from collection A in latent space, and where?

    Args:
        a, b: latents files of any layout nenya writes (made by the same model: their records are
            checked unless ``force``), opened :class:`~nenya.analysis.latents.Latents`, or
            ``(ids, vectors)`` pairs (not checked). Files are read only as needed: the samples, then
            slab by slab for the clusters (see the module).
        sample: items per side for the MMD and classifier tests (drawn at random; memory for the
            MMD grows as ``(sample_a + sample_b) x (permutations + 1024)`` doubles).
        permutations: permutations for the MMD p-value. clusters: k for the k-means on the union.
        holdout: the classifier's held-out share (scored for its test). seed: every random choice.
        names: the collections' names (default: the file stems, or A and B).
        progress: progress bars: one over the stages (MMD² test, classifier test, k-means clusters),
            and one over the MMD's blocks. The report (:func:`~nenya.analysis.compare_report.write_shift_report`)
            has its own.

    Example:
        >>> r = compare_collections("modis_latents.h5", "viirs_latents.h5")   # doctest: +SKIP
        >>> r.mmd_p, r.classifier_p, r.over_represented(3)                    # doctest: +SKIP
    """
    if not force and all(isinstance(v, (str, os.PathLike)) for v in (a, b)):
        check_same_model(str(a), str(b))
    name_a, ids_a, xa = _load(a, "A")
    name_b, ids_b, xb = _load(b, "B")
    if _dim(xa) != _dim(xb):
        raise InputError(f"the collections' vectors differ in dimension: {_dim(xa)} and {_dim(xb)}")
    if names is None:
        names = (name_a, name_b) if name_a != name_b else ("A", "B")
    rng = np.random.default_rng(seed)
    sa, sb = _sample(len(ids_a), sample, rng), _sample(len(ids_b), sample, rng)
    with Stages("compare", ["MMD² test", "classifier test", "k-means clusters"], progress=progress) as stages:
        stages.start("MMD² test")
        va, vb = Rows(xa, "l2").get(sa), Rows(xb, "l2").get(sb)
        mmd2, mmd_p, sigma = mmd_test(va, vb, permutations=permutations, seed=seed, progress=progress)
        stages.start("classifier test")
        acc, clf_p, clf_n = classifier_test(va, vb, holdout=holdout, seed=seed)
        stages.start("k-means clusters")
        if len(ids_a) + len(ids_b) <= KMEANS_SAMPLE:  # in memory, k-means on every item
            fa, fb = (x if isinstance(x, np.ndarray) else x.vectors() for x in (xa, xb))  # type: ignore[attr-defined]
            table, la, lb = cluster_shares(fa, fb, k=clusters, seed=seed, ids_a=ids_a, ids_b=ids_b)
        else:
            table, la, lb = streamed_shares(xa, xb, k=clusters, seed=seed, ids_a=ids_a, ids_b=ids_b, progress=progress)
    log.info(
        "%s vs %s: MMD² %.3g (p %.3g), classifier accuracy %.3f (p %.3g)", names[0], names[1], mmd2, mmd_p, acc, clf_p
    )
    return CollectionShift(
        names=(str(names[0]), str(names[1])),
        n_a=len(ids_a),
        n_b=len(ids_b),
        sample_a=len(sa),
        sample_b=len(sb),
        mmd2=mmd2,
        mmd_p=mmd_p,
        bandwidth=sigma,
        permutations=permutations,
        accuracy=acc,
        classifier_p=clf_p,
        classifier_n=clf_n,
        clusters=table,
        ids_a=ids_a,
        ids_b=ids_b,
        labels_a=la,
        labels_b=lb,
        rows_a=sa,
        rows_b=sb,
    )

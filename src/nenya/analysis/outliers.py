"""What is unusual in a collection: a score for every latent vector, the lowest the most unusual.

``method="flow"`` is Ulmo's: a normalizing flow (:mod:`nenya.analysis.flow`) fitted on a random sample
of the latents gives every vector a log-likelihood (LL); the lowest ``fraction`` (0.1% in Ulmo's
papers) are the outliers. Scoring streams the file in slabs, in bounded memory. A saved flow scores
other collections (another year, another sensor, model output) on one scale, and refuses latents of
another model unless forced. ``method="knn"`` is a quick score without fitting: minus the mean
distance to the k nearest neighbours (FAISS).

The fit runs at ``fit_precision`` (default auto) and scoring at ``precision`` (default fp32): fp32,
bf16 or auto (bf16 where the CPU computes it natively, :mod:`nenya.device`'s policy); bf16 LLs are
within a fraction of a nat of fp32 and rank the same but near the cut (see :mod:`nenya.analysis.flow`). The record says which precision scored and how long the fit and the
scoring took.

Vectors that are zero or not finite (Nenya writes zeros for cutouts with NaN) are left out of the
fit and the ranking, and marked ``valid = False``.

    >>> r = outliers("x_latents.h5", fraction=0.001)
    >>> r.table.sort_values("rank").head()                                     # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from nenya._errors import InputError, NenyaError
from nenya.analysis.flow import EPOCHS, FlowModel, fit_flow, load_flow, scoring_precision
from nenya.analysis.latents import Latents, open_latents, read_about

log = logging.getLogger(__name__)

__all__ = ["OutlierResult", "outliers", "write_outliers"]

FIT_SAMPLE = 150_000
FRACTION = 0.001


@dataclass
class OutlierResult:
    """``table``: id, score (the LL, or minus the kNN distance), rank (1: the most unusual), outlier,
    valid, and the latents' metadata; ``record``: how it was scored; ``flow``: the flow used."""

    table: pd.DataFrame
    record: dict
    flow: FlowModel | None = None


def _valid(v: np.ndarray) -> np.ndarray:
    return np.isfinite(v).all(axis=1) & (np.abs(v).sum(axis=1) > 0)


def outliers(
    latents: str | Latents,
    *,
    method: str = "flow",
    fraction: float = FRACTION,
    fit_sample: int = FIT_SAMPLE,
    flow: str | FlowModel | None = None,
    force: bool = False,
    k: int = 10,
    epochs: int = EPOCHS,
    seed: int = 0,
    partitions: list[str] | None = None,
    precision: str = "fp32",
    fit_precision: str = "auto",
    progress: bool = True,
) -> OutlierResult:
    """Score every vector of a latents file and flag the lowest ``fraction`` (see the module).
    ``precision`` (fp32, bf16, auto) is the flow's scoring precision, ``fit_precision`` its fit's."""
    if method not in ("flow", "knn"):
        raise ValueError(f"method must be flow or knn; got {method!r}")
    if not 0 < fraction < 1:
        raise ValueError(f"--fraction must be between 0 and 1; got {fraction}")
    used = scoring_precision(precision)  # checked before anything is read
    scoring_precision(fit_precision)
    lat = latents if isinstance(latents, Latents) else open_latents(latents, partitions=partitions)
    about = read_about(lat.path)
    try:
        if method == "knn":
            score, valid, record = _knn(lat, k, progress)
            model = None
        else:
            model = _flow_for(lat, about, flow, force, (fit_sample, epochs, fit_precision), seed, progress)
            started = time.perf_counter()
            score, valid = _score(lat, model, used, progress)
            record = {
                "method": "flow", "precision": used, "score_seconds": round(time.perf_counter() - started, 3),
                "flow": model.record, "flow_config": model.config,
            }  # fmt: skip
            if precision != used:
                record["precision_asked"] = precision
    finally:
        if not isinstance(latents, Latents):
            lat.close()
    table = _ranked(lat, score, valid, fraction)
    n_valid = int(valid.sum())
    record.update(
        latents=str(lat.path), items=lat.n, valid=n_valid, invalid=lat.n - n_valid, fraction=fraction,
        outliers=int(table["outlier"].sum()), threshold=_threshold(table),
    )  # fmt: skip
    if lat.n - n_valid:
        log.warning(
            "%d vector(s) zero or not finite: left out of the fit and the ranking (valid = False)", lat.n - n_valid
        )
    return OutlierResult(table, record, model)


def _flow_for(lat, about, flow, force, fit: tuple[int, int, str], seed, progress) -> FlowModel:
    if flow is None:
        sample, epochs, precision = fit
        v = _sample(lat, sample, seed)
        return fit_flow(v, epochs=epochs, seed=seed, precision=precision, about=about, progress=progress)
    model = load_flow(str(flow)) if isinstance(flow, (str, os.PathLike)) else flow
    if model.dim != lat.dim:
        raise InputError(f"the flow was fitted on {model.dim}-d latents; {lat.path} holds {lat.dim}-d vectors")
    if not force:
        from nenya.analysis.shift import model_difference

        force_hint = "pass --force to score them with it anyway"
        if about is None or model.about is None:
            raise InputError(f"cannot check that one model made the flow's latents and {lat.path}; {force_hint}")
        what = model_difference(model.about, about)
        if what is not None:
            raise InputError(f"the flow was fitted on latents of another model ({what}); {force_hint}")
    return model


def _sample(lat: Latents, m: int, seed: int) -> np.ndarray:
    """At most ``m`` random valid vectors."""
    rng = np.random.default_rng(seed)
    rows = np.arange(lat.n) if lat.n <= m else np.sort(rng.choice(lat.n, m, replace=False))
    v = lat.vectors(rows)
    v = v[_valid(v)]
    if not len(v):
        raise InputError(f"{lat.path}: no valid vector to fit on (every one sampled is zero or not finite)")
    log.info("fitting the flow on %d of %d vectors", len(v), lat.n)
    return v


def _score(lat: Latents, model: FlowModel, precision: str, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    from tqdm.auto import tqdm

    score = np.full(lat.n, np.nan)
    valid = np.zeros(lat.n, bool)
    with tqdm(total=lat.n, desc=f"scoring ({precision})", unit="vec", disable=not progress) as bar:
        for start, v in lat.iter_vectors(65536):
            ok = _valid(v)
            valid[start : start + len(v)] = ok
            if ok.any():
                score[start : start + len(v)][ok] = model.log_prob(v[ok], precision=precision)
            bar.update(len(v))
    return score, valid


def _knn(lat: Latents, k: int, progress: bool) -> tuple[np.ndarray, np.ndarray, dict]:
    from tqdm.auto import tqdm

    from nenya.analysis.search import build_index

    vectors = lat.vectors()
    valid = _valid(vectors)
    rows = np.flatnonzero(valid)
    if len(rows) <= k:
        raise InputError(f"{lat.path}: {len(rows)} valid vectors; the kNN score needs more than k = {k}")
    index = build_index(vectors[rows], np.arange(len(rows)).astype(str))
    score = np.full(lat.n, np.nan)
    with tqdm(total=len(rows), desc="kNN distances", unit="vec", disable=not progress) as bar:
        for a in range(0, len(rows), 16384):
            q = vectors[rows[a : a + 16384]]
            _, d2, hit = index.search(q, k + 1)
            own = hit == np.arange(a, a + len(q))[:, None]  # the vector itself, wherever it ranks
            d = np.sqrt(np.maximum(np.where(own, np.nan, d2), 0))
            score[rows[a : a + len(q)]] = -np.nanmean(d[:, : k + 1], axis=1)
            bar.update(len(q))
    return score, valid, {"method": "knn", "k": k, "index": index.kind}


def _ranked(lat: Latents, score: np.ndarray, valid: np.ndarray, fraction: float) -> pd.DataFrame:
    order = np.argsort(np.where(valid, score, np.inf), kind="stable")
    rank = np.zeros(lat.n, np.int64)
    rank[order] = np.arange(1, lat.n + 1)
    rank[~valid] = 0
    n_out = max(1, math.ceil(fraction * int(valid.sum())))
    table = pd.DataFrame(
        {"id": lat.ids, "score": score, "rank": rank, "outlier": valid & (rank <= n_out), "valid": valid}
    )
    meta = lat.metadata.reset_index(drop=True)
    return pd.concat([table, meta.drop(columns=[c for c in meta.columns if c in table.columns])], axis=1)


def _threshold(table: pd.DataFrame) -> float | None:
    out = table.loc[table["outlier"], "score"]
    return float(out.max()) if len(out) else None


def write_outliers(r: OutlierResult, folder: str, *, images=None) -> list[str]:
    """``outliers.parquet`` (the table), ``record.json``, ``flow.safetensors`` (a fitted flow) and the
    pictures (:mod:`nenya.analysis.outlier_plots`) in ``folder``; their paths."""
    from nenya.analysis.latents import local_target, write_table
    from nenya.analysis.outlier_plots import plot_outliers
    from nenya.pipeline import storage

    if not storage.is_remote(folder):
        os.makedirs(folder, exist_ok=True)
    paths = [
        write_table(
            r.table, storage.join(folder, "outliers.parquet"), metadata={"nenya_outliers": json.dumps(r.record)}
        )
    ]
    if r.flow is not None and r.record.get("method") == "flow":
        paths.append(r.flow.save(storage.join(folder, "flow.safetensors")))
    path = storage.join(folder, "record.json")
    with local_target(path) as tmp, open(tmp, "w") as f:
        json.dump(r.record, f, indent=2)
    paths.append(path)
    try:
        paths += plot_outliers(r, folder, images=images)
    except NenyaError as e:  # a picture that cannot be made never costs the scores
        log.warning("outlier pictures: %s", e)
    return paths

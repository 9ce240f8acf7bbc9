"""Nenya's single-image API: the latents, DT and UMAP position of one cutout.

Example:
    >>> img = np.load("raw_sst_cutout.npy")                      # doctest: +SKIP
    >>> calc_DT(img, [40, 5])                                     # doctest: +SKIP
    1.0441...
    >>> emb, pp_img, table_file, DT, latents = umap_image("v5", img)   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from typing import cast

import numpy as np

from nenya._errors import InputError
from nenya.encoders.named import NAMED_MODELS, load_opt, resolve_opts, resolve_weights
from nenya.params import Params

log = logging.getLogger(__name__)

__all__ = ["get_latents", "calc_DT", "umap_image"]


def get_latents(
    img: np.ndarray, model_file: str, opt: Params | str | os.PathLike, *, trust_checkpoint: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The latents of one image, exactly as extraction computes them.

    Args:
        img: one cutout, (H, W), (1, H, W) or (C, H, W) (raw SST or anomaly: it is demeaned here).
        model_file: the model checkpoint (``last.pth``, local path or URL).
        opt: the model's options (Params, an opts JSON, or a named model).
        trust_checkpoint: allow arbitrary pickled objects in the checkpoint (trusted files only).

    Returns:
        ``(latents (1, feat_dim) float32, pp_img (1, nchannels, H, W) float32)``: the vector and the
        demeaned image repeated to the model's channels, as fed to the model.
    """
    import torch

    from nenya.encoders.supcon import SupConEncoder

    opt = resolve_opts(opt)
    a = np.asarray(img, dtype=np.float32)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise InputError(f"get_latents takes one image, (H, W), (1, H, W) or (C, H, W); got shape {np.shape(img)}")
    if not np.isfinite(a).all():
        raise InputError("the image holds NaN or inf values (land or cloud?); fill or mask them before encoding")
    encoder = SupConEncoder.from_checkpoint(model_file, opt, trust_checkpoint=trust_checkpoint).to("cpu")
    batch = torch.from_numpy(a[None].copy())
    latents = encoder.encode(batch).cpu().numpy().astype(np.float32)
    pp_img = encoder.prepare(batch).cpu().numpy().astype(np.float32)
    return latents, pp_img


def calc_DT(images: np.ndarray, random_jitter: Sequence[int], verbose: bool = False) -> float | np.ndarray:
    """DT = T90 - T10 over the central ``random_jitter[0]`` square of each image.

    The square spans rows and columns ``H//2 - c//2`` to ``H//2 + c//2`` (12:52 for 64x64 and
    c = 40); percentiles use numpy's default linear interpolation. DT does not change when a
    constant is added, so raw SST and anomalies give the same value.

    Args:
        images: one image (H, W), or a batch (N, H, W) or (N, C, H, W) (channel 0 is used).
        random_jitter: ``[crop, jitter]`` (only the crop is used).
        verbose: log the window.

    Returns:
        A float for one image, an (N,) array for a batch.
    """
    a = np.asarray(images)
    single = a.ndim == 2
    if a.ndim == 4:
        fields = a[:, 0]
    elif a.ndim == 3:
        fields = a
    elif single:
        fields = a[None]
    else:
        raise InputError(f"calc_DT takes (H, W), (N, H, W) or (N, C, H, W) images; got shape {a.shape}")
    c = int(random_jitter[0])
    xc, yc = fields.shape[-2] // 2, fields.shape[-1] // 2
    if c <= 0 or c > min(fields.shape[-2:]):
        raise InputError(f"random_jitter[0] = {c} does not fit images of {fields.shape[-2:]}")
    window = fields[:, xc - c // 2 : xc + c // 2, yc - c // 2 : yc + c // 2]
    if verbose:
        log.info("DT over rows %d:%d, columns %d:%d", xc - c // 2, xc + c // 2, yc - c // 2, yc + c // 2)
    t90 = np.percentile(window, 90.0, axis=(1, 2))
    t10 = np.percentile(window, 10.0, axis=(1, 2))
    dt = t90 - t10
    return float(dt[0]) if single else dt


def _stored_position(reducer, latents: np.ndarray, tol: float = 1e-4) -> np.ndarray | None:
    """The UMAP position of a training vector equal to ``latents`` (up to float rounding), else None.

    UMAP's ``transform`` of a point it was trained on does not give back its stored position
    (the transform is an approximate, seeded optimisation, and 1e-7 differences in the latents,
    e.g. batch of 1 vs batch of 128 through the network, change its random stream), so an image
    of the training set would land up to a unit away from itself: return its stored place instead.
    """
    raw, emb = getattr(reducer, "_raw_data", None), getattr(reducer, "embedding_", None)
    if raw is None or emb is None or len(raw) != len(emb) or getattr(raw, "ndim", 0) != 2:
        return None
    raw = np.asarray(raw, dtype=np.float32)
    d = np.linalg.norm(raw - latents.reshape(1, -1).astype(np.float32), axis=1)
    i = int(np.argmin(d))
    if d[i] > tol * max(1.0, float(np.linalg.norm(latents))):
        return None
    return np.asarray(emb[i : i + 1], dtype=np.float32)


def umap_image(nenya_model: str, img: np.ndarray) -> tuple[np.ndarray, np.ndarray, str, float, np.ndarray]:
    """Place one image on the UMAP of its DT bin.

    Args:
        nenya_model: a named model (``v4``, ``v5``, ``viirs_v1``: weights from ``NENYA_MODEL_DIR``) or
            the opts JSON of your own model (weights at ``<s3_outdir>/<model_folder>/last.pth``).
        img: one cutout (H, W) or (1, H, W).

    Returns:
        ``(embedding (1, 2), pp_img, table_file, DT, latents (1, feat_dim))``; the UMAP comes from
        :func:`nenya.nenya_umap.load` (the UMAP dir, ``$NENYA_UMAP_DIR``). An image the UMAP was
        fitted on gets its stored position; any other image UMAP's ``transform``.
    """
    from nenya import nenya_umap

    opt, model_file = load_opt(nenya_model)
    if nenya_model in NAMED_MODELS:
        model_file = resolve_weights(opt, name=nenya_model)
    latents, pp_img = get_latents(img, model_file, opt)
    jitter = opt.get("random_jitter") or opt.get("random_cropjitter") or [40, 5]
    a = np.asarray(img)
    DT = cast(
        float, calc_DT(a if a.ndim == 2 else a.reshape(a.shape[-2:]) if a.shape[0] == 1 else a[0], jitter)
    )  # one image: one DT
    log.info("image has DT = %.4g", DT)
    reducer, table_file = nenya_umap.load(nenya_model, DT=DT)
    embedding = _stored_position(reducer, latents)
    if embedding is None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*n_jobs value.*")
            embedding = reducer.transform(latents)
    log.info("U0, U1 of the image: %.3f, %.3f", embedding[0, 0], embedding[0, 1])
    return embedding, pp_img, table_file, DT, latents

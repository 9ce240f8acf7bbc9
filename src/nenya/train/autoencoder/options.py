"""The options of an autoencoder run: the configuration, the crop, the normalisation, and the
options a run records in its checkpoints (new, or those of the checkpoint it resumes)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from nenya._errors import CheckpointError, InputError
from nenya.encoders.autoencoder import crop_batch
from nenya.encoders.weights import load_checkpoint
from nenya.params import Params, read_json
from nenya.train import common
from nenya.train.data import ArrayDataset


@dataclass(frozen=True)
class AutoencoderConfig:
    """Options of ``nenya train autoencoder`` (opts JSON keys = field names).

    Attributes:
        data: training images: ``file.h5`` (with ``partition``) or ``file.h5:train``, ``images.npy``
            ((N, H, W) or (N, C, H, W)), a folder of images, or TFRecord files (``feature``, ``shape``).
        partition: the HDF5 dataset to read.
        nlayers, poolsize, numfilters, num_dense: the architecture (see :class:`ConvAutoencoder`).
        crop: ``None`` (no crop), ``[rows, cols]`` (``null`` keeps an axis whole) or ``"pool"``
            (the largest size each axis that ``poolsize**nlayers`` divides).
        crop_offset: top-left corner ``[row, col]`` of the crop.
        demean: subtract each image's mean.
        standardize: scale by the training set's per-channel mean and std (recorded in the checkpoint).
        batch_size, num_steps, num_checkpoints, learning_rate: Adam on LogCosh; a checkpoint every
            ``num_steps // num_checkpoints`` steps.
        n_images: train on the first ``n_images`` images only (None: all).
        output: the model folder (local or URL).
        seed: seeds the initialisation and the batch order.
        num_workers: reader processes for files too large to hold in memory.
        in_memory: ``"auto"`` (files up to 2 GiB), ``true`` or ``false``.
        feature, shape: for TFRecord data (``tfrecord:PATTERN`` or ``*.tfrecord``), the feature holding
            the image and its shape (``H,W[,C]`` or the name of a feature holding it, as HRRR's ``size``).
    """

    data: str | None = None
    partition: str = "train"
    nlayers: int = 4
    poolsize: int = 4
    numfilters: int = 4
    num_dense: int = 50
    crop: Any = None
    crop_offset: tuple[int, int] = (0, 0)
    demean: bool = False
    standardize: bool = True
    batch_size: int = 8
    num_steps: int = 1000
    num_checkpoints: int = 10
    learning_rate: float = 1e-3
    n_images: int | None = None
    output: str = "ae-model"
    seed: int = 0
    num_workers: int = 0
    in_memory: Any = "auto"
    feature: str | None = None
    shape: str | None = None

    @classmethod
    def from_json(cls, path: str | os.PathLike | None = None, **overrides: Any) -> AutoencoderConfig:
        """Options from a JSON file (unknown keys are an error), then ``overrides`` that are not None."""
        values: dict[str, Any] = {}
        if path is not None:
            values = read_json(path)
        values.update({k: v for k, v in overrides.items() if v is not None})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown autoencoder option(s) {unknown}; expected some of {sorted(names)}")
        if "crop_offset" in values:
            values["crop_offset"] = tuple(int(v) for v in values["crop_offset"])
        return cls(**values)


def crop_box(cfg: AutoencoderConfig, height: int, width: int) -> list[int]:
    """``[row0, row1, col0, col1]`` of the crop for images of ``height`` x ``width``."""
    r0, c0 = (int(v) for v in cfg.crop_offset)
    if cfg.crop is None:
        rows, cols = height - r0, width - c0
    elif cfg.crop == "pool":
        unit = cfg.poolsize**cfg.nlayers
        rows, cols = (height - r0) // unit * unit, (width - c0) // unit * unit
    else:
        crop = [cfg.crop, cfg.crop] if isinstance(cfg.crop, int) else list(cfg.crop)
        if len(crop) != 2:
            raise ValueError(f"crop must be [rows, cols], 'pool' or null; got {cfg.crop!r}")
        rows = height - r0 if crop[0] is None else int(crop[0])
        cols = width - c0 if crop[1] is None else int(crop[1])
    if rows < 1 or cols < 1 or r0 + rows > height or c0 + cols > width:
        raise InputError(
            f"the crop {rows}x{cols} at ({r0}, {c0}) does not fit {height}x{width} images; change crop / crop_offset"
        )
    return [r0, r0 + rows, c0, c0 + cols]


def _norm_stats(
    ds: ArrayDataset, box: list[int], demean: bool, *, sample: int = 1024, seed: int = 0
) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of (a sample of) the cropped images, after uint8 scaling and demean."""
    n = len(ds)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(n, size=min(n, sample), replace=False))
    sums = None
    count = 0
    for start in range(0, len(idx), 256):
        x = ds.__getitems__(idx[start : start + 256])
        x = x[0] if isinstance(x, tuple) else x
        x = crop_batch(x, box).double()
        if ds.dtype == np.uint8:
            x = x / 255.0
        if demean:
            x = x - x.mean(dim=(1, 2, 3), keepdim=True)
        s1, s2 = x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3))
        sums = (s1, s2) if sums is None else (sums[0] + s1, sums[1] + s2)
        count += x.shape[0] * x.shape[2] * x.shape[3]
    assert sums is not None
    mean = sums[0] / count
    std = torch.sqrt(torch.clamp(sums[1] / count - mean**2, min=0.0))
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    return [float(v) for v in mean], [float(v) for v in std]


def _ae_opt(
    cfg: AutoencoderConfig, ds: ArrayDataset, box: list[int], mean: list[float] | None, std: list[float] | None
) -> Params:
    c = ds.image_shape[0]
    values = {k: v for k, v in dataclasses.asdict(cfg).items()}
    values.update(
        {
            "model_type": "autoencoder",
            "input_shape": [c, box[1] - box[0], box[3] - box[2]],
            "raw_shape": list(ds.image_shape),
            "crop_box": box,
            "mean": mean,
            "std": std,
            "data_dtype": str(ds.dtype),
            "data_name": ds.name,
            "loss": "logcosh",
            "optimizer_name": "Adam",
        }
    )
    return common.plain_params(values)


def _ae_options(
    cfg: AutoencoderConfig, ds: ArrayDataset, box: list[int], resume: str | os.PathLike | None
) -> tuple[Params, dict[str, Any] | None]:
    """The run's options and the checkpoint resumed from (None for a new run).

    A resumed run keeps the checkpoint's architecture and normalisation and takes this run's step
    budget; a new one measures the normalisation on the data.
    """
    if resume is None:
        mean = std = None
        if cfg.standardize:
            mean, std = _norm_stats(ds, box, cfg.demean, seed=cfg.seed)
        return _ae_opt(cfg, ds, box, mean, std), None
    ckpt = load_checkpoint(str(resume))
    opt = ckpt["opt"] if isinstance(ckpt.get("opt"), Params) else Params(**(ckpt.get("opt") or {}))
    if getattr(opt, "model_type", None) != "autoencoder":
        raise CheckpointError(f"cannot resume from {resume}: not an autoencoder checkpoint")
    for key in ("num_steps", "num_checkpoints", "learning_rate", "batch_size", "output"):
        setattr(opt, key, common.plain(getattr(cfg, key)))
    return opt, ckpt

"""Nenya's training utilities: model and loss, options, augmentations, loaders, one-epoch training.

The names are Nenya's (``set_model``, ``nenya_loader``, ``train_model``, ``set_optimizer``,
``adjust_learning_rate``, ``warmup_learning_rate``, ``save_model``, the augmentation classes);
the work is done by :mod:`nenya.train.contrastive` (where ``set_model`` and the schedules live)
and :mod:`nenya.train.augment`, which batch the augmentations on the device instead of running
scikit-image per image in the loader. This face imports the trainers; they never import it.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from nenya.models.resnet_big import SupConResNet
from nenya.params import Params, option_preprocess
from nenya.train.augment import AugmentConfig, augment
from nenya.train.common import CheckpointWriter, checkpoint_state
from nenya.train.contrastive import (
    EpochSetup,
    adjust_learning_rate,
    data_file,
    run_epoch,
    set_model,
    set_optimizer,
    warmup_learning_rate,
)
from nenya.train.data import ArrayDataset, open_dataset
from nenya.train.losses import SupConLoss

__all__ = [
    "set_model",
    "option_preprocess",
    "SupConLoss",
    "SupConResNet",
    "set_optimizer",
    "adjust_learning_rate",
    "warmup_learning_rate",
    "save_model",
    "train_model",
    "nenya_loader",
    "NenyaDataset",
    "TwoCropTransform",
    "AverageMeter",
    "RandomFlip",
    "RandomRotate",
    "JitterCrop",
    "GaussianNoise",
    "Demean",
    "ThreeChannel",
]


def save_model(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    opt: Params,
    epoch: int,
    save_file: str | os.PathLike,
) -> None:
    """Write Nenya's checkpoint ``{'opt', 'model', 'optimizer', 'epoch'}`` atomically (folders created)."""
    inner = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    folder = os.path.dirname(os.path.abspath(save_file))
    os.makedirs(folder, exist_ok=True)
    CheckpointWriter(folder).save(checkpoint_state(opt, inner, optimizer, epoch), os.path.basename(save_file))


def train_model(
    train_loader: Any,
    model: torch.nn.Module,
    criterion: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    epoch: int,
    opt: Params,
    cuda_use: bool = True,
    update_model: bool = True,
) -> tuple[float, list[float], list[float]]:
    """One epoch (Nenya's ``train_model``); with ``update_model=False`` a validation pass (eval mode, no gradients).

    ``train_loader`` yields Nenya's two views ``[view1, view2]`` (as :func:`nenya_loader` makes) or raw
    batches, which are then augmented here by the opts' chain.

    Returns:
        ``(mean loss, per-step losses, running-average losses)``.
    """
    device = torch.device("cuda" if cuda_use and torch.cuda.is_available() else "cpu")
    setup = EpochSetup(
        device, aug=AugmentConfig.from_opt(opt), update=update_model, desc="train" if update_model else "valid"
    )
    res = run_epoch(train_loader, model, criterion, optimizer, epoch, opt, setup)
    return res.loss, res.step_losses, res.avg_losses


# --------------------------------------------------------------------------- Nenya's per-image classes
def _one(image: np.ndarray, cfg: AugmentConfig) -> np.ndarray:
    """Apply ``cfg`` to one (H, W) or (H, W, C) image (Nenya's layout), returning the same layout."""
    arr = np.asarray(image, dtype=np.float32)
    hwc = arr.ndim == 3
    x = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1) if hwc else arr[None]))[None]
    out = augment(x, cfg)[0].numpy()
    return out.transpose(1, 2, 0) if hwc else out[0]


class RandomFlip:
    """Random left-right and up-down flips (p = 0.5 each)."""

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return _one(image, AugmentConfig(flip=True, rotate=False, demean=False, nchannels=_channels(image)))


class RandomRotate:
    """Rotation by a uniform angle in [0, 360) degrees (bilinear, 0 fill)."""

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return _one(image, AugmentConfig(flip=False, rotate=True, demean=False, nchannels=_channels(image)))


class JitterCrop:
    """A ``crop_dim`` crop whose centre moves by up to ``jitter_lim`` pixels, resized back to the input size."""

    def __init__(self, crop_dim: int = 32, rescale: int = 0, jitter_lim: int = 0) -> None:
        if rescale:
            raise ValueError("JitterCrop: rescale is not supported (nor was it in Nenya)")
        self.crop_dim, self.jitter_lim = crop_dim, jitter_lim

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return _one(
            image,
            AugmentConfig(
                flip=False,
                rotate=False,
                crop=self.crop_dim,
                jitter=self.jitter_lim,
                demean=False,
                nchannels=_channels(image),
            ),
        )


class GaussianNoise:
    """Add Gaussian noise (``instrument_noise = (mean, sigma)``)."""

    def __init__(self, instrument_noise: tuple[float, float] = (0, 0.1)) -> None:
        self.mean, self.std = instrument_noise

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return image + np.random.normal(self.mean, self.std, size=np.shape(image)).astype(np.float32)


class Demean:
    """Subtract the image mean."""

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return image - np.mean(image)


class ThreeChannel:
    """Repeat the last (channel) axis to 3."""

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return np.repeat(image, 3, axis=-1)


def _channels(image: np.ndarray) -> int:
    return int(np.shape(image)[-1]) if np.ndim(image) == 3 else 1


class TwoCropTransform:
    """Two independent transforms of the same image."""

    def __init__(self, transform: Any) -> None:
        self.transform = transform

    def __call__(self, x: Any) -> list[Any]:
        return [self.transform(x), self.transform(x)]


class AverageMeter:
    """Current value and running average."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget every value."""
        self.val = self.avg = self.sum = 0.0
        self.count = 0

    def update(self, val: float, n: int = 1) -> None:
        """Add ``val``, the mean of ``n`` values."""
        self.val = val
        self.sum += val * n
        self.count += n
        self.avg = self.sum / self.count


class NenyaDataset(ArrayDataset):
    """One partition of a preproc file for training (Nenya's name); read lazily in slabs."""

    def __init__(self, data_path: str, transform: Any = None, data_key: str = "train") -> None:
        super().__init__(data_path, data_key, in_memory=False)
        self.transform = transform

    def __getitem__(self, index: int) -> Any:
        image = super().__getitem__(index).numpy()
        return self.transform(image.transpose(1, 2, 0)) if self.transform is not None else image


class _TwoViews:
    """collate_fn: a raw batch -> Nenya's ``[view1, view2]``, augmented on the CPU."""

    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg

    def __call__(self, batch: Any) -> list[torch.Tensor]:
        return [augment(batch, self.cfg), augment(batch, self.cfg)]


def nenya_loader(opt: Params, valid: bool = False) -> DataLoader:
    """A shuffled DataLoader of two augmented views per cutout (Nenya's ``nenya_loader``).

    Reads ``opt.valid_key`` when ``valid`` else ``opt.train_key`` of ``<data_folder>/<images_file>``.
    """
    key = opt.get("valid_key", "valid") if valid else opt.get("train_key", "train")
    ds = open_dataset(data_file(opt), key, in_memory=opt.get("data_in_memory", "auto"))
    bsz = int(opt.get("batch_size_valid" if valid else "batch_size_train", 64))
    workers = 0 if ds.in_memory else int(opt.get("num_workers", 0))
    return DataLoader(
        ds, batch_size=bsz, shuffle=True, num_workers=workers, collate_fn=_TwoViews(AugmentConfig.from_opt(opt))
    )

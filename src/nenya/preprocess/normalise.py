"""The device side of preprocessing: scale, demean, normalise per channel, repeat channels."""

from __future__ import annotations

import torch

from nenya._errors import InputError
from nenya.preprocess.config import Preprocess


def normalise(x: torch.Tensor, pre: Preprocess, *, name: str = "the model") -> torch.Tensor:
    """A raw batch as model input, on the batch's device.

    uint8 batches (photos) are scaled to [0, 1]; ``pre.demean`` subtracts each image's mean (Nenya
    cutouts); ``pre.mean``/``pre.std`` normalise per channel; one channel is repeated to
    ``pre.in_channels``. ``name`` names the model in errors.
    """
    if x.dim() == 3:
        x = x[:, None]
    if x.dim() != 4:
        raise InputError(f"expected a batch (B, C, H, W), got shape {tuple(x.shape)}")
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    if pre.demean:
        x = x - x.mean(dim=(1, 2, 3), keepdim=True)
    if pre.mean is not None or pre.std is not None:
        c = x.shape[1]
        if c == 1 and pre.in_channels != 1:
            x = x.expand(-1, pre.in_channels, -1, -1)
        mean = torch.tensor(pre.mean if pre.mean is not None else (0.0,), device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(pre.std if pre.std is not None else (1.0,), device=x.device).view(1, -1, 1, 1)
        x = (x - mean) / std
    c, want = x.shape[1], pre.in_channels
    if c != want:
        if c != 1:
            raise InputError(f"{name} takes {want} channel(s); got images with {c}")
        x = x.expand(-1, want, -1, -1)
    return x

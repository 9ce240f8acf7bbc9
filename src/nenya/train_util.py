"""Nenya's training utilities: model and loss construction, option preprocessing."""

from __future__ import annotations

import torch

from nenya.encoders.supcon import build_model
from nenya.models.resnet_big import SupConResNet
from nenya.params import Params, option_preprocess
from nenya.train.losses import SupConLoss

__all__ = ["set_model", "option_preprocess", "SupConLoss", "SupConResNet"]


def set_model(opt: Params, cuda_use: bool = True) -> tuple[SupConResNet, SupConLoss]:
    """The SupConResNet of ``opt`` and its SupCon loss (temperature ``opt.temp``).

    Unlike Nenya, the encoder is never wrapped in DataParallel (which put ``module.`` into
    saved names); use DDP under torchrun for several GPUs.

    Returns:
        ``(model, criterion)``, on the GPU when ``cuda_use`` and one is available.
    """
    model = build_model(opt)
    criterion = SupConLoss(temperature=float(getattr(opt, "temp", None) or 0.07))
    if cuda_use and torch.cuda.is_available():
        model, criterion = model.cuda(), criterion.cuda()
        torch.backends.cudnn.benchmark = True
    return model, criterion

"""The model, loss and optimiser of a contrastive run (Nenya's ``set_model`` and ``set_optimizer``)."""

from __future__ import annotations

import torch

from nenya.encoders.supcon import build_model
from nenya.models.resnet_big import SupConResNet
from nenya.params import Params
from nenya.train.losses import SupConLoss


def set_model(opt: Params, cuda_use: bool = True) -> tuple[SupConResNet, SupConLoss]:
    """The SupConResNet of ``opt`` and its SupCon loss (temperature ``opt.temp``).

    Unlike Nenya, the encoder is never wrapped in DataParallel (which put ``module.`` into
    saved names); use DDP under torchrun for several GPUs.

    Args:
        opt: the options (``ssl_model``, ``feat_dim``, ``nchannels``, ``temp``).
        cuda_use: move both to the GPU when one is available.

    Returns:
        ``(model, criterion)``, on the GPU when ``cuda_use`` and one is available.
    """
    model = build_model(opt)
    criterion = SupConLoss(temperature=float(getattr(opt, "temp", None) or 0.07))
    if cuda_use and torch.cuda.is_available():
        model, criterion = model.cuda(), criterion.cuda()
        torch.backends.cudnn.benchmark = True
    return model, criterion


def set_optimizer(opt: Params, model: torch.nn.Module) -> torch.optim.SGD:
    """SGD with momentum and weight decay (``learning_rate``, ``momentum``, ``weight_decay``)."""
    return torch.optim.SGD(
        model.parameters(),
        lr=float(opt.learning_rate),
        momentum=float(opt.momentum),
        weight_decay=float(opt.weight_decay),
    )

"""The learning-rate schedules of a contrastive run: cosine or step decay per epoch, linear warm-up."""

from __future__ import annotations

import math

import numpy as np
import torch

from nenya.params import Params, parse_decay_epochs


def epoch_learning_rate(opt: Params, epoch: int) -> float:
    """The learning rate of ``epoch`` (1-based): cosine to ``lr * lr_decay_rate**3``, or step decay
    by ``lr_decay_rate`` at each of ``lr_decay_epochs`` passed."""
    lr = float(opt.learning_rate)
    rate = float(opt.lr_decay_rate)
    if opt.get("cosine"):
        eta_min = lr * rate**3
        return eta_min + (lr - eta_min) * (1 + math.cos(math.pi * epoch / int(opt.epochs))) / 2
    steps = int(np.sum(epoch > np.asarray(parse_decay_epochs(opt.lr_decay_epochs), dtype=float)))
    return lr * rate**steps if steps > 0 else lr


def adjust_learning_rate(opt: Params, optimizer: torch.optim.Optimizer, epoch: int) -> float:
    """Set the learning rate of ``epoch`` (Nenya's ``adjust_learning_rate``); returns it."""
    lr = epoch_learning_rate(opt, epoch)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def warmup_learning_rate(
    opt: Params, epoch: int, batch_id: int, total_batches: int, optimizer: torch.optim.Optimizer
) -> None:
    """Linear warm-up from ``warmup_from`` to ``warmup_to`` over the first ``warm_epochs`` epochs."""
    warm_epochs = int(getattr(opt, "warm_epochs", 0) or 0)
    if opt.get("warm") and epoch <= warm_epochs:
        p = (batch_id + (epoch - 1) * total_batches) / (warm_epochs * total_batches)
        lr = float(opt.warmup_from) + p * (float(opt.warmup_to) - float(opt.warmup_from))
        for group in optimizer.param_groups:
            group["lr"] = lr

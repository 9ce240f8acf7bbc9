"""One pass of a contrastive run over a loader: the loss of two views per image, SGD steps when training."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from nenya._errors import NenyaError
from nenya.device import autocast
from nenya.params import Params
from nenya.train import common
from nenya.train.augment import AugmentConfig, two_views
from nenya.train.contrastive.schedules import warmup_learning_rate

#: the package's logger: the log names the messages as before the trainer became a package
log = logging.getLogger("nenya.train.contrastive")


@dataclass
class EpochResult:
    """What one pass over a loader did: mean loss, Nenya's per-step lists, images, time."""

    loss: float = float("nan")
    step_losses: list[float] = field(default_factory=list)
    avg_losses: list[float] = field(default_factory=list)
    images: int = 0
    seconds: float = 0.0
    stopped: bool = False


@dataclass(frozen=True)
class EpochSetup:
    """How :func:`run_epoch` makes one pass: where, how precisely, when to stop, what to record.

    Attributes:
        device: where the model is.
        aug: the augmentation chain for raw batches (None when the loader yields two views).
        generator: seeds the augmentations (a CPU generator).
        noise_generator: seeds the Gaussian noise (a generator on ``device``).
        update: train (SGD steps, train mode) or validate (eval mode, no gradients).
        amp_dtype: autocast dtype of the forward pass (None: fp32).
        scaler: the fp16 GradScaler, if any.
        deadline: stop (``stopped=True``) past this ``time.monotonic()`` value.
        max_batches: stop after this many batches.
        curve: the learning curve that gets a row per step.
        global_step: optimiser steps before this pass (the ``step`` of train rows).
        progress: show a tqdm bar.
        desc: the label of the bar and of the log lines.
        postfix: more ``(name, value)`` pairs for the bar (the last health figures).
    """

    device: torch.device
    aug: AugmentConfig | None = None
    generator: torch.Generator | None = None
    noise_generator: torch.Generator | None = None
    update: bool = True
    amp_dtype: torch.dtype | None = None
    scaler: Any = None
    deadline: float | None = None
    max_batches: int | None = None
    curve: common.LearningCurve | None = None
    global_step: int = 0
    progress: bool = False
    desc: str = "train"
    postfix: tuple[tuple[str, str], ...] = ()


def _views_and_labels(
    batch: Any,
    aug: AugmentConfig | None,
    device: torch.device,
    gen: torch.Generator | None,
    noise_gen: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """(2B views, labels or None, B) from a raw batch, (batch, labels), or Nenya's [view1, view2]."""
    labels = None
    if (
        isinstance(batch, (list, tuple))
        and len(batch) == 2
        and torch.is_tensor(batch[1])
        and batch[1].shape == batch[0].shape
    ):  # two views made by the loader (nenya_loader)
        views = torch.cat([batch[0], batch[1]]).to(device, non_blocking=True).float()
        return views, None, batch[0].shape[0]
    if isinstance(batch, (list, tuple)):
        batch, labels = batch[0], batch[1].to(device, non_blocking=True)
    x = batch.to(device, non_blocking=True)
    if aug is None:
        raise ValueError("raw batches need an augmentation config")
    return two_views(x, aug, gen, noise_gen), labels, x.shape[0]


def _step(
    batch: Any,
    idx: int,
    total: int,
    model: torch.nn.Module,
    criterion: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    epoch: int,
    opt: Params,
    setup: EpochSetup,
) -> tuple[float, int]:
    """One batch: the contrastive loss of two views per image, and an SGD step when training.

    Returns:
        ``(loss, images in the batch)``.
    """
    views, labels, bsz = _views_and_labels(batch, setup.aug, setup.device, setup.generator, setup.noise_generator)
    stepping = setup.update and optimizer is not None
    if stepping:
        assert optimizer is not None
        warmup_learning_rate(opt, epoch, idx, total, optimizer)
    with autocast(setup.device, setup.amp_dtype):
        features = model(views)
    f1, f2 = torch.split(features.float(), [bsz, bsz], dim=0)
    features = torch.stack([f1, f2], dim=1)
    loss = criterion(features, labels) if labels is not None else criterion(features)
    if stepping:
        assert optimizer is not None
        common.optimise(loss, optimizer, setup.scaler)
    value = float(loss.detach())
    if not math.isfinite(value):
        raise NenyaError(
            f"the {setup.desc} loss became {value} at epoch {epoch}, batch {idx}; lower "
            "learning_rate, or use fp32 / bf16 instead of fp16"
        )
    return value, bsz


class _EpochMeter:
    """The running loss of one pass, reported to its result, the learning curve, the bar and the log."""

    def __init__(
        self, setup: EpochSetup, epoch: int, total: int, optimizer: torch.optim.Optimizer | None, print_freq: int
    ) -> None:
        self.setup, self.epoch, self.total, self.optimizer, self.print_freq = setup, epoch, total, optimizer, print_freq
        self.result = EpochResult()
        self.loss_sum, self.seen = 0.0, 0
        self.t0 = time.perf_counter()
        self.bar = tqdm(
            total=total,
            desc=setup.desc,
            unit="batch",
            disable=not setup.progress,
            leave=setup.update,
            dynamic_ncols=True,
        )

    def add(self, idx: int, value: float, bsz: int) -> None:
        """Count batch ``idx`` (loss ``value`` over ``bsz`` images)."""
        s = self.setup
        self.loss_sum += value * bsz
        self.seen += bsz
        avg = self.loss_sum / self.seen
        self.result.step_losses.append(value)
        self.result.avg_losses.append(avg)
        elapsed = time.perf_counter() - self.t0
        if s.curve is not None:
            lr = self.optimizer.param_groups[0]["lr"] if (s.update and self.optimizer is not None) else None
            s.curve.add(
                "train_step" if s.update else "valid_step",
                self.epoch,
                s.global_step + idx + 1 if s.update else idx,
                value,
                loss_avg=avg,
                lr=lr,
                images_per_s=self.seen / elapsed if elapsed > 0 else None,
            )
        rate = self.seen / max(elapsed, 1e-9)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{value:.3f}", avg=f"{avg:.3f}", img_s=f"{rate:.1f}", **dict(s.postfix))
        if self.print_freq and (idx + 1) % self.print_freq == 0:
            log.info(
                "%s: [%d][%d/%d] loss %.4f (%.4f) %.1f images/s",
                s.desc,
                self.epoch,
                idx + 1,
                self.total,
                value,
                avg,
                rate,
            )

    def close(self) -> None:
        """Close the progress bar."""
        self.bar.close()

    def finish(self) -> EpochResult:
        """The result, with the mean loss, the images seen and the time taken."""
        res = self.result
        res.images, res.seconds = self.seen, time.perf_counter() - self.t0
        res.loss = self.loss_sum / self.seen if self.seen else float("nan")
        return res


def run_epoch(
    loader: Any,
    model: torch.nn.Module,
    criterion: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    epoch: int,
    opt: Params,
    setup: EpochSetup,
) -> EpochResult:
    """One pass over ``loader``: SimCLR/SupCon loss of two views per image, SGD steps when ``setup.update``.

    Stops early (``stopped=True``) at ``setup.deadline`` (a ``time.monotonic()`` value) or after
    ``setup.max_batches``. Returns the mean loss and Nenya's per-step and running-average lists.

    Example:
        >>> res = run_epoch(loader, model, criterion, optimizer, 1, opt,
        ...                 EpochSetup(torch.device("cpu"), aug=AugmentConfig.from_opt(opt)))  # doctest: +SKIP
    """
    model.train(setup.update)
    total = len(loader) if setup.max_batches is None else min(len(loader), setup.max_batches)
    meter = _EpochMeter(setup, epoch, total, optimizer, print_freq=int(opt.get("print_freq", 0) or 0))
    try:
        with torch.enable_grad() if setup.update else torch.no_grad():
            for idx, batch in enumerate(loader):
                if idx >= total:
                    break
                if setup.deadline is not None and time.monotonic() > setup.deadline:
                    meter.result.stopped = True
                    break
                value, bsz = _step(batch, idx, total, model, criterion, optimizer, epoch, opt, setup)
                meter.add(idx, value, bsz)
    finally:
        meter.close()
    return meter.finish()

"""A contrastive run's state (its summary, limits and shared state) and everything before its first epoch."""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from nenya.encoders.weights import load_checkpoint
from nenya.params import Params
from nenya.ranks import Ranks
from nenya.train import common
from nenya.train.augment import AugmentConfig
from nenya.train.contrastive.model import set_model, set_optimizer
from nenya.train.contrastive.options import DEBUG_LIMITS, output_folder
from nenya.train.data import ArrayDataset, open_partitions, per_rank
from nenya.train.health import HealthOptions, HealthProbe

#: the package's logger: the log names the messages as before the trainer became a package
log = logging.getLogger("nenya.train.contrastive")


@dataclass
class TrainSummary:
    """What a training run did: where it wrote, how far it got, how fast."""

    last: str
    folder: str
    epochs_done: int = 0
    start_epoch: int = 1
    #: optimiser steps at the end (a resumed run's earlier steps included) and at the start
    steps: int = 0
    start_step: int = 0
    #: the images this run trained on
    images: int = 0
    seconds: float = 0.0
    train_loss: float | None = None
    valid_loss: float | None = None
    stopped_early: bool = False
    checkpoints: list[str] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        """Training images per second over the epochs run."""
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        """One line for the CLI: this run's epochs, steps and images (with the step count in all when it
        resumed), speed, losses."""
        done = self.steps - self.start_step
        parts = [
            f"epochs {self.start_epoch}-{self.epochs_done}" if self.epochs_done >= self.start_epoch else "no epoch run",
            f"{done} steps" + (f" ({self.steps} in all)" if self.start_step else ""),
            f"{self.images} images in {self.seconds:.1f} s",
            f"{self.images_per_s:.1f} images/s",
        ]
        if self.train_loss is not None:
            parts.append(f"train loss {self.train_loss:.4f}")
        if self.valid_loss is not None:
            parts.append(f"valid loss {self.valid_loss:.4f}")
        if self.stopped_early:
            parts.append("stopped at the time limit")
        return ", ".join(parts)


@dataclass(frozen=True)
class _Limits:
    """When a run stops: deadlines (``time.monotonic()`` values) and batch caps."""

    deadline: float | None = None
    train_deadline: float | None = None
    max_train_batches: int | None = None
    max_valid_batches: int | None = None

    def later(self, seconds: float) -> _Limits:
        """The same limits with the deadlines ``seconds`` later."""
        return dataclasses.replace(
            self,
            deadline=None if self.deadline is None else self.deadline + seconds,
            train_deadline=None if self.train_deadline is None else self.train_deadline + seconds,
        )


@dataclass
class _Run:
    """The state one training run's steps share (made by :func:`_start`)."""

    opt: Params
    ranks: Ranks
    device: torch.device
    writer: common.CheckpointWriter
    model: torch.nn.Module
    train_model: torch.nn.Module
    criterion: torch.nn.Module
    optimizer: torch.optim.Optimizer
    amp_dtype: torch.dtype | None
    scaler: Any
    curve: common.LearningCurve
    summary: TrainSummary
    train_ds: ArrayDataset
    valid_ds: ArrayDataset | None
    aug: AugmentConfig
    limits: _Limits
    progress: bool
    global_step: int = 0
    steps_per_epoch: int | None = None
    health: HealthOptions = HealthOptions()
    probe: HealthProbe | None = None
    postfix: tuple[tuple[str, str], ...] = ()


def _limits(
    opt: Params,
    t_start: float,
    max_seconds: float | None,
    debug: bool,
    max_train_batches: int | None,
    max_valid_batches: int | None,
) -> _Limits:
    """The run's limits; ``debug`` also cuts ``opt.epochs`` (and says so)."""
    # the time limit covers everything: training stops at 85% of it to leave time for validation
    deadline = t_start + max_seconds if max_seconds is not None else None
    train_deadline = t_start + 0.85 * max_seconds if max_seconds is not None else None
    if debug:
        max_train_batches = min(max_train_batches or DEBUG_LIMITS[0], DEBUG_LIMITS[0])
        max_valid_batches = min(max_valid_batches or DEBUG_LIMITS[1], DEBUG_LIMITS[1])
        opt.epochs = min(int(opt.epochs), DEBUG_LIMITS[2])
        log.warning(
            "debug=True: %d epochs of at most %d batches (valid %d), written to a _debug folder",
            opt.epochs,
            max_train_batches,
            max_valid_batches,
        )
    return _Limits(deadline, train_deadline, max_train_batches, max_valid_batches)


def _model_and_optimiser(
    opt: Params, dev: torch.device
) -> tuple[torch.nn.Module, torch.nn.Module, torch.optim.Optimizer]:
    """The model and loss of the opts on ``dev``, and their SGD optimiser."""
    model, criterion = set_model(opt, cuda_use=False)
    model.to(dev)
    criterion.to(dev)
    if dev.type == "cuda":
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs omit it
        torch.backends.cudnn.benchmark = True
    return model, criterion, set_optimizer(opt, model)


def _resume(
    writer: common.CheckpointWriter,
    resume: str | os.PathLike | None,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: Any,
) -> tuple[int, int, common.LearningCurve]:
    """``(first epoch, optimiser steps done, learning curve)`` of a new run, or of one resumed from
    ``resume`` (its model, optimiser and scaler state loaded by :func:`common.resume_state`)."""
    if resume is None:
        return 1, 0, common.LearningCurve()
    done, global_step = common.resume_state(
        load_checkpoint(str(resume)),
        str(resume),
        model,
        optimizer,
        scaler,
        what="the model of the opts",
        advice="Check ssl_model, feat_dim and nchannels.",
        warn=log,
    )
    log.info("resuming from %s after epoch %d (step %d)", resume, done, global_step)
    return done + 1, global_step, common.LearningCurve.read(writer.local("learning_curve.csv"), up_to_epoch=done)


def _distributed(
    model: torch.nn.Module, opt: Params, ranks: Ranks, dev: torch.device
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """``(model, the module to train)``: DDP (with SyncBatchNorm when ``syncBN``) over several ranks."""
    if not ranks.distributed:
        return model, model
    if opt.get("syncBN") and dev.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model, torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[dev.index] if dev.type == "cuda" else None
    )


def _write_opts(opt: Params, writer: common.CheckpointWriter, ranks: Ranks) -> None:
    """Rank 0 writes the options as ``opts.json`` into the model folder."""
    if ranks.is_main:
        if not writer.remote:
            os.makedirs(writer.stage, exist_ok=True)
        opt.save(writer.local("opts.json"))
        writer.publish("opts.json")


def _start(
    opt: Params,
    limits: _Limits,
    *,
    output: str | os.PathLike | None,
    device: str | None,
    precision: str,
    debug: bool,
    resume: str | os.PathLike | None,
    auto_resume: bool,
    progress: bool,
    health: HealthOptions = HealthOptions(),
) -> _Run:
    """Everything before the first epoch: ranks and device, model, resume point, data, opts.json,
    the health probe."""
    ranks, dev = common.setup_distributed(device if device is not None else "auto")
    folder = output_folder(opt, output)
    if debug:
        folder = folder.rstrip("/") + "_debug"
    writer = common.CheckpointWriter(folder, enabled=ranks.is_main)
    common.seed_everything(int(opt.seed))
    model, criterion, optimizer = _model_and_optimiser(opt, dev)
    amp_dtype = common.autocast_dtype(precision, dev)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    resume = common.resume_location(writer, resume, auto_resume)
    start_epoch, global_step, curve = _resume(writer, resume, model, optimizer, scaler)
    model, train_model = _distributed(model, opt, ranks, dev)
    train_ds, valid_ds = open_partitions(opt)
    _write_opts(opt, writer, ranks)
    summary = TrainSummary(
        last=writer.location("last.pth"),
        folder=folder,
        start_epoch=start_epoch,
        epochs_done=start_epoch - 1,
        steps=global_step,
        start_step=global_step,
    )
    log.info(
        "training %s (%s) on %s: %d images, batch %d x %d rank(s), epochs %d-%d, %s",
        opt.ssl_model,
        opt.ssl_method,
        train_ds.name,
        len(train_ds),
        per_rank(opt.batch_size_train, ranks),
        ranks.world,
        start_epoch,
        int(opt.epochs),
        dev,
    )
    return _Run(
        opt,
        ranks,
        dev,
        writer,
        model,
        train_model,
        criterion,
        optimizer,
        amp_dtype,
        scaler,
        curve,
        summary,
        train_ds,
        valid_ds,
        AugmentConfig.from_opt(opt),
        limits,
        progress,
        global_step,
        health=health,
        probe=_probe(opt, health, train_ds, valid_ds, dev, amp_dtype) if ranks.is_main else None,
    )


def _probe(
    opt: Params,
    health: HealthOptions,
    train_ds: ArrayDataset,
    valid_ds: ArrayDataset | None,
    device: torch.device,
    amp_dtype: torch.dtype | None,
) -> HealthProbe | None:
    """The health probe of a run (None when disabled): on the validation partition (else train)."""
    if not health.enabled:
        return None
    column = health.eval_column or opt.get("eval_column") or opt.get("label_column")
    return HealthProbe(
        valid_ds if valid_ds is not None else train_ds,
        train_ds,
        AugmentConfig.from_opt(opt),
        device,
        amp_dtype=amp_dtype,
        eval_column=str(column) if column else None,
        color_column=health.snapshot_color,
        sample=health.sample,
        bank=health.bank,
        k=health.k,
        seed=int(opt.seed),
    )

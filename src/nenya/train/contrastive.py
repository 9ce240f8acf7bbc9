"""SimCLR / SupCon training of SupConResNet on preproc HDF5 cutouts (Nenya's ``train.main``).

Trains on the ``train_key`` partition and validates on ``valid_key`` (Nenya's ``train`` and
``valid``) of ``<data_folder>/<images_file>``, with the augmentations, loss, optimiser and
schedules of Nenya (formats doc §5). Writes ``ckpt_epoch_<E>.pth`` every ``save_freq`` epochs and
``last.pth`` into ``<s3_outdir>/<model_folder>`` (the place ``latents_extraction.prep`` looks), in
Nenya's checkpoint format, plus ``learning_curve.csv``/``.png`` and the options as ``opts.json``.

Example:
    >>> from nenya.train.contrastive import train
    >>> last = train("opts.json", max_seconds=60)     # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler
from tqdm.auto import tqdm

from nenya._errors import InputError, NenyaError
from nenya.device import autocast
from nenya.encoders.named import resolve_opts
from nenya.encoders.supcon import build_model
from nenya.encoders.weights import fit_state, load_checkpoint
from nenya.models.resnet_big import SupConResNet
from nenya.params import Params, option_preprocess, parse_decay_epochs
from nenya.pipeline import storage
from nenya.ranks import Ranks
from nenya.sources import RecordOptions
from nenya.train import common
from nenya.train.augment import AugmentConfig, two_views
from nenya.train.data import ArrayDataset, collate_batch, is_tfrecord_spec, load_labels, open_dataset
from nenya.train.health import HealthOptions, HealthProbe, collapse_message, metrics_line, snapshot_plot
from nenya.train.losses import SupConLoss

log = logging.getLogger(__name__)

#: Option defaults filled in when an opts file leaves a key out (None values count as missing).
DEFAULTS: dict[str, Any] = {
    "ssl_method": "SimCLR",
    "ssl_model": "resnet18",
    "feat_dim": 128,
    "temp": 0.07,
    "learning_rate": 0.05,
    "lr_decay_rate": 0.1,
    "weight_decay": 1e-4,
    "momentum": 0.9,
    "epochs": 1,
    "batch_size_train": 64,
    "trial": 0,
    "cosine": False,
    "warm": False,
    "train_key": "train",
    "valid_key": "valid",
    "print_freq": 10,
    "save_freq": 1,
    "valid_freq": 1,
    "num_workers": 0,
    "flip": True,
    "rotate": True,
    "demean": True,
    "gauss_noise": 0.0,
    "seed": 0,
}

#: Batches per epoch (train, valid) and epochs of a ``debug`` run.
DEBUG_LIMITS = (5, 2, 2)


@dataclass
class TrainSummary:
    """What a training run did: where it wrote, how far it got, how fast."""

    last: str
    folder: str
    epochs_done: int = 0
    start_epoch: int = 1
    steps: int = 0
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
        """One line for the CLI: epochs, steps, speed, losses."""
        parts = [
            f"epochs {self.start_epoch}-{self.epochs_done}" if self.epochs_done >= self.start_epoch else "no epoch run",
            f"{self.steps} steps",
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


# --------------------------------------------------------------------------- options
def prepare_opt(opt: Params | str | os.PathLike | dict[str, Any]) -> Params:
    """Options from a Params, a dict or an opts JSON, with defaults filled in and Nenya's derived
    names (``model_name``, ``model_folder``, warm-up values) computed by ``option_preprocess``.

    The options are read by :func:`nenya.encoders.named.resolve_opts` (the one resolver), with
    :data:`DEFAULTS` for the keys left out; the caller's object is never changed.

    Raises:
        NenyaError: an unknown ``ssl_method``, or SupCon without ``label_column``.
    """
    p = resolve_opts(opt, defaults=DEFAULTS)
    if getattr(p, "batch_size_valid", None) is None:
        p.batch_size_valid = p.batch_size_train
    if getattr(p, "random_cropjitter", None) is None and getattr(p, "random_jitter", None) is not None:
        p.random_cropjitter = p.random_jitter
    p.model_name = None  # recomputed from the (possibly overridden) hyper-parameters
    option_preprocess(p)
    if p.ssl_method not in ("SimCLR", "SupCon"):
        raise NenyaError(f"unknown ssl_method {p.ssl_method!r}; expected SimCLR or SupCon")
    if p.ssl_method == "SupCon" and not getattr(p, "label_column", None):
        raise NenyaError(
            "ssl_method SupCon needs labels: set label_column to a column of <partition>_metadata "
            "(or an integer dataset in the file), or use SimCLR"
        )
    return p


def data_file(opt: Params) -> str:
    """``<data_folder>/<images_file>`` (either may be a URL), or ``images_file`` alone."""
    images = getattr(opt, "images_file", None)
    if not images:
        raise NenyaError("the opts name no training data: set images_file (and data_folder) to a preproc .h5 file")
    folder = getattr(opt, "data_folder", None)
    prefix, images = ("tfrecord:", str(images)[9:]) if str(images).startswith("tfrecord:") else ("", str(images))
    if folder and not os.path.isabs(images) and not storage.is_remote(images):
        return prefix + storage.join(folder, images)
    return prefix + images


def output_folder(opt: Params, output: str | os.PathLike | None = None) -> str:
    """The model folder: ``output`` when given, else ``<s3_outdir or .>/<model_folder>``."""
    if output is not None:
        return str(output)
    if not opt.model_folder:
        raise NenyaError("cannot name the model folder: the opts lack model hyper-parameters; give --output")
    return storage.join(getattr(opt, "s3_outdir", None) or ".", opt.model_folder)


# --------------------------------------------------------------------------- model, optimiser, schedules
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


# --------------------------------------------------------------------------- one epoch
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


# --------------------------------------------------------------------------- data
def _loader(
    ds: ArrayDataset,
    batch_size: int,
    *,
    shuffle: bool,
    epoch: int,
    seed: int,
    ranks: Ranks,
    num_workers: int,
    device: torch.device,
) -> DataLoader:
    sampler: Any
    if ranks.distributed:
        sampler = torch.utils.data.distributed.DistributedSampler(
            ds, num_replicas=ranks.world, rank=ranks.rank, shuffle=shuffle, seed=seed, drop_last=shuffle
        )
        sampler.set_epoch(epoch)
    elif shuffle:
        sampler = RandomSampler(ds, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    else:
        sampler = SequentialSampler(ds)
    workers = 0 if ds.in_memory else min(int(num_workers), max((os.cpu_count() or 1) - 1, 0))
    drop_last = shuffle and len(ds) // max(ranks.world, 1) >= 2 * batch_size
    return DataLoader(
        ds,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=workers,
        collate_fn=collate_batch,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )


def _per_rank(batch_size: Any, ranks: Ranks) -> int:
    """Each rank's share of a global batch size (at least 1)."""
    return max(1, int(batch_size) // ranks.world)


def _open_tfrecords(opt: Params, path: str) -> tuple[ArrayDataset, ArrayDataset | None]:
    """TFRecord training data (``feature`` and ``shape`` from the opts): every record trains; no
    validation partition (the health metrics then use a fixed sample of the training records)."""
    if opt.ssl_method == "SupCon":
        raise InputError(f"SupCon reads its labels from a preproc HDF5 file's metadata; {path} is TFRecord data")
    records = RecordOptions(feature=opt.get("feature"), shape=opt.get("shape"))
    train_ds = open_dataset(path, in_memory=opt.get("data_in_memory", "auto"), records=records)
    log.warning("%s: TFRecord data has no validation partition: no validation loss", path)
    return train_ds, None


def _open_partitions(opt: Params) -> tuple[ArrayDataset, ArrayDataset | None]:
    path = data_file(opt)
    if is_tfrecord_spec(path):
        return _open_tfrecords(opt, path)
    local = storage.fetch(path)
    if not os.path.exists(local):
        raise InputError(f"training data not found: {path} (from data_folder / images_file in the opts)")
    in_memory = opt.get("data_in_memory", "auto")
    keys = _partition_names(local)
    train_key, valid_key = opt.train_key, opt.valid_key
    if train_key not in keys:
        if valid_key in keys:
            log.warning("%s has no %r partition: training on %r (and validating on it too)", path, train_key, valid_key)
            train_key = valid_key
        else:
            raise InputError(
                f"{path} has neither {train_key!r} nor {valid_key!r}; it holds {keys}. Set train_key "
                "and valid_key in the opts"
            )
    train_ds = open_dataset(local, train_key, in_memory=in_memory)
    valid_ds = open_dataset(local, valid_key, in_memory=in_memory) if valid_key in keys else None
    if valid_ds is None:
        log.warning("%s has no %r partition: no validation loss", path, valid_key)
    if opt.ssl_method == "SupCon":
        _attach_labels(opt, train_ds, valid_ds)
    return train_ds, valid_ds


def _attach_labels(opt: Params, *datasets: ArrayDataset | None) -> None:
    """SupCon: give each dataset the integer classes of ``opt.label_column``."""
    column = str(opt.label_column)  # set: prepare_opt refuses SupCon without it
    for ds in datasets:
        if ds is not None:
            labels, names = load_labels(ds, column)
            ds.labels = torch.from_numpy(labels)
            log.info("SupCon labels from %r: %d classes (%s)", column, len(names), ", ".join(names[:8]))


def _partition_names(local: str) -> list[str]:
    from nenya.sources.h5files import open_checked

    with open_checked(local) as f:
        return sorted(k for k in f.keys() if not k.endswith("_metadata"))


# --------------------------------------------------------------------------- the trainer
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


def _load_resume(path: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: Any) -> tuple[int, int]:
    """Load a checkpoint's model (strictly, by :func:`fit_state`), optimiser and scaler state;
    returns ``(epochs done, optimiser steps done)``."""
    ckpt = load_checkpoint(path)
    fit_state(
        model,
        ckpt["model"],
        source=f"cannot resume: {path}",
        what="the model of the opts",
        advice="Check ssl_model, feat_dim and nchannels.",
    )
    if ckpt.get("optimizer"):
        optimizer.load_state_dict(ckpt["optimizer"])
    else:
        log.warning("%s holds no optimiser state: momentum restarts from zero", path)
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    epoch = int(ckpt.get("epoch") or 0)
    return epoch, int(ckpt.get("step") or 0)


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
    start_epoch, global_step = 1, 0
    if resume is None and auto_resume and storage.exists(writer.location("last.pth")):
        resume = writer.location("last.pth")
    if resume is not None:
        done, global_step = _load_resume(str(resume), model, optimizer, scaler)
        start_epoch = done + 1
        log.info("resuming from %s after epoch %d (step %d)", resume, done, global_step)
    curve = (
        common.LearningCurve.read(writer.local("learning_curve.csv"), up_to_epoch=start_epoch - 1)
        if resume is not None
        else common.LearningCurve()
    )
    model, train_model = _distributed(model, opt, ranks, dev)
    train_ds, valid_ds = _open_partitions(opt)
    _write_opts(opt, writer, ranks)
    summary = TrainSummary(
        last=writer.location("last.pth"),
        folder=folder,
        start_epoch=start_epoch,
        epochs_done=start_epoch - 1,
        steps=global_step,
    )
    log.info(
        "training %s (%s) on %s: %d images, batch %d x %d rank(s), epochs %d-%d, %s",
        opt.ssl_model,
        opt.ssl_method,
        train_ds.name,
        len(train_ds),
        _per_rank(opt.batch_size_train, ranks),
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


def _measure(run: _Run, epoch: int, loss: float) -> None:
    """The health metrics of the model after ``epoch`` (0: untrained) into the curve, the log, the
    bar and a snapshot; warns when the latents look collapsed."""
    if run.probe is None:
        if not math.isnan(loss):
            run.curve.add("valid_epoch", epoch, run.global_step, loss)
        return
    metrics, latents = run.probe.measure(run.model)
    run.curve.add("valid_epoch", epoch, run.global_step, loss, metrics=metrics)
    log.info("epoch %d%s: %s", epoch, " (untrained)" if epoch == 0 else "", metrics_line(metrics))
    run.postfix = (("erank", f"{metrics['erank_latent']:.1f}"),) + (
        (("knn", f"{metrics['knn_accuracy']:.3f}"),) if math.isfinite(metrics["knn_accuracy"]) else ()
    )
    warning = collapse_message(metrics)
    if warning and epoch > 0:  # an untrained head can look collapsed: the run is what is judged
        log.warning("epoch %d: %s", epoch, warning)
    every = run.health.snapshot_every
    if every and epoch % every == 0:
        name = f"snapshot_epoch_{epoch:03d}.png"
        title = (
            f"{run.opt.ssl_method} {run.opt.ssl_model}, epoch {epoch}: {run.health.snapshot.upper()} of "
            f"{len(latents)} validation latents\neffective rank {metrics['erank_latent']:.1f}, mean cosine "
            f"{metrics['cos_mean']:.2f}" + (" (collapsed?)" if warning else "")
        )
        snapshot_plot(
            latents,
            run.writer.local(name),
            how=run.health.snapshot,
            labels=run.probe.colors,
            title=title,
            color_name=run.probe.color_name,
        )
        run.writer.publish(name)


def _fit_epoch(run: _Run, epoch: int) -> tuple[EpochResult, float]:
    """The training pass of ``epoch``; returns its result and learning rate."""
    opt, ranks, lim, seed = run.opt, run.ranks, run.limits, int(run.opt.seed)
    loader = _loader(
        run.train_ds,
        _per_rank(opt.batch_size_train, ranks),
        shuffle=True,
        epoch=epoch,
        seed=seed,
        ranks=ranks,
        num_workers=int(opt.num_workers),
        device=run.device,
    )
    run.steps_per_epoch = len(loader) if lim.max_train_batches is None else min(len(loader), lim.max_train_batches)
    lr = adjust_learning_rate(opt, run.optimizer, epoch)
    setup = EpochSetup(
        run.device,
        aug=run.aug,
        generator=torch.Generator().manual_seed(seed * 7919 + epoch * 104729 + ranks.rank),
        noise_generator=torch.Generator(device=run.device).manual_seed(seed * 31 + epoch * 131 + ranks.rank),
        update=True,
        amp_dtype=run.amp_dtype,
        scaler=run.scaler,
        deadline=lim.train_deadline if run.valid_ds is not None else lim.deadline,
        max_batches=lim.max_train_batches,
        curve=run.curve if ranks.is_main else None,
        global_step=run.global_step,
        progress=run.progress and ranks.is_main,
        desc=f"epoch {epoch}/{int(opt.epochs)}",
        postfix=run.postfix,
    )
    res = run_epoch(loader, run.train_model, run.criterion, run.optimizer, epoch, opt, setup)
    run.global_step += len(res.step_losses)
    s = run.summary
    s.steps, s.images = run.global_step, s.images + res.images * ranks.world
    s.seconds += res.seconds
    return res, lr


def _validate(run: _Run, epoch: int) -> None:
    """The validation pass after ``epoch``: its mean loss into the summary, the curve and the log."""
    opt, ranks, seed = run.opt, run.ranks, int(run.opt.seed)
    assert run.valid_ds is not None, "called only when there is a validation partition"
    loader = _loader(
        run.valid_ds,
        _per_rank(opt.batch_size_valid, ranks),
        shuffle=False,
        epoch=0,
        seed=seed,
        ranks=ranks,
        num_workers=int(opt.num_workers),
        device=run.device,
    )
    setup = EpochSetup(
        run.device,
        aug=run.aug,
        generator=torch.Generator().manual_seed(seed + 12345 + ranks.rank),
        noise_generator=torch.Generator(device=run.device).manual_seed(seed + 54321 + ranks.rank),
        update=False,
        amp_dtype=run.amp_dtype,
        deadline=run.limits.deadline,
        max_batches=run.limits.max_valid_batches,
        curve=run.curve if ranks.is_main else None,
        progress=run.progress and ranks.is_main,
        desc=f"valid {epoch}",
    )
    vres = run_epoch(loader, run.model, run.criterion, None, epoch, opt, setup)
    if vres.step_losses:
        (vloss,) = common.all_reduce_mean([vres.loss], run.device)
        run.summary.valid_loss = vloss
        log.info("epoch %d: valid loss %.4f", epoch, vloss)
        if ranks.is_main:
            _measure(run, epoch, vloss)


def _save(run: _Run, epoch: int, names: list[str]) -> None:
    """Save the run's state as each of ``names`` (and the learning curve)."""
    opt = run.opt
    extra = {"scaler": run.scaler.state_dict()} if run.scaler is not None else {}
    state = common.checkpoint_state(opt, run.model, run.optimizer, epoch, step=run.global_step, **extra)
    run.summary.checkpoints += run.writer.save_all(
        state,
        names,
        run.curve,
        title=f"{opt.ssl_method} {opt.ssl_model}",
        steps_per_epoch=run.steps_per_epoch,
        is_main=run.ranks.is_main,
    )


def _epoch(run: _Run, epoch: int) -> bool:
    """Train, validate and save ``epoch``; False when the run stops after it (the time limit)."""
    res, lr = _fit_epoch(run, epoch)
    summary, ranks, deadline = run.summary, run.ranks, run.limits.deadline
    if not res.step_losses:  # the time ran out before this epoch's first batch
        summary.stopped_early = True
        return False
    (mean_loss,) = common.all_reduce_mean([res.loss], run.device)
    summary.train_loss, summary.epochs_done = mean_loss, epoch
    rate = res.images * ranks.world / max(res.seconds, 1e-9)
    if ranks.is_main:
        run.curve.add("train_epoch", epoch, run.global_step, mean_loss, lr=lr, images_per_s=rate)
    log.info(
        "epoch %d: train loss %.4f, %.1f s, %.1f images/s%s",
        epoch,
        mean_loss,
        res.seconds,
        rate,
        " (stopped at the time limit)" if res.stopped else "",
    )
    if (
        run.valid_ds is not None
        and epoch % int(run.opt.valid_freq) == 0
        and not (deadline and time.monotonic() > deadline)
    ):
        _validate(run, epoch)
    if res.stopped:
        summary.stopped_early = True
        return False
    names = ["last.pth"]
    if epoch % int(run.opt.save_freq) == 0:
        names.insert(0, f"ckpt_epoch_{epoch}.pth")
    _save(run, epoch, names)
    return True


def _finish(run: _Run) -> None:
    """Close the data; under torchrun, wait for every rank."""
    run.train_ds.close()
    if run.valid_ds is not None:
        run.valid_ds.close()
    if run.ranks.distributed and torch.distributed.is_initialized():
        torch.distributed.barrier()


def train_run(
    opt: Params | str | os.PathLike | dict[str, Any],
    *,
    max_seconds: float | None = None,
    progress: bool = True,
    resume: str | os.PathLike | None = None,
    auto_resume: bool = False,
    output: str | os.PathLike | None = None,
    device: str | None = "auto",
    precision: str = "fp32",
    debug: bool = False,
    max_train_batches: int | None = None,
    max_valid_batches: int | None = None,
    health: HealthOptions = HealthOptions(),
    compile: bool = False,
) -> TrainSummary:
    """Train and return a :class:`TrainSummary` (see :func:`train` for the arguments)."""
    t_start = time.monotonic()
    opt = prepare_opt(opt)
    limits = _limits(opt, t_start, max_seconds, debug, max_train_batches, max_valid_batches)
    run = _start(
        opt,
        limits,
        output=output,
        device=device,
        precision=precision,
        debug=debug,
        resume=resume,
        auto_resume=auto_resume,
        progress=progress,
        health=health,
    )
    if compile:
        from nenya.device import compile_model

        compiled = compile_model(run.train_model, str(opt.ssl_model))
        if compiled is not None:  # else a warning was logged: eager
            run.train_model = compiled
    try:
        if run.summary.start_epoch == 1 and run.ranks.is_main:
            t0 = time.monotonic()
            _measure(run, 0, float("nan"))  # the untrained model: the baseline of every figure
            run.limits = run.limits.later(time.monotonic() - t0)  # measuring is not training time
        for epoch in range(run.summary.start_epoch, int(opt.epochs) + 1):
            if not _epoch(run, epoch):
                break
        # epochs_done is the last epoch finished (or cut short by the time limit)
        if run.summary.stopped_early or not storage.exists(run.writer.location("last.pth")):
            _save(run, run.summary.epochs_done, ["last.pth"])
    finally:
        _finish(run)
    return run.summary


def train(
    opt: Params | str | os.PathLike | dict[str, Any],
    *,
    max_seconds: float | None = None,
    progress: bool = True,
    **kwargs: Any,
) -> str:
    """Train SupConResNet on the opts' data; return the location of ``last.pth``.

    Args:
        opt: a Params, a dict of options, or an opts JSON path (Nenya's keys; see docs/training.md).
        max_seconds: stop after this many seconds (the current epoch is cut short, validated within
            the remaining time, and saved as ``last.pth``); None trains all ``epochs``. The untrained
            model's health measurement (epoch 0) comes before and is not counted.
        progress: show a tqdm bar with the loss and images/s.
        **kwargs: ``resume`` (a checkpoint), ``auto_resume`` (continue from the folder's last.pth),
            ``output`` (model folder instead of ``<s3_outdir>/<model_folder>``), ``device``
            (auto, cpu, cuda), ``precision`` (auto, fp32, bf16, fp16), ``debug``, ``max_train_batches``,
            ``max_valid_batches``, ``health`` (a :class:`~nenya.train.health.HealthOptions`: the
            eval column, snapshots), ``compile`` (``torch.compile`` the model).

    Example:
        >>> from nenya.train.contrastive import demo_opts, train
        >>> last = train(demo_opts("demo_preproc.h5", "demo"), max_seconds=60)    # doctest: +SKIP
    """
    return train_run(opt, max_seconds=max_seconds, progress=progress, **kwargs).last


def main(opt_path: str | os.PathLike, debug: bool = False, load_epoch: int | None = None) -> str:
    """Nenya's ``train.main``: train with an opts JSON; ``load_epoch`` resumes from ``ckpt_epoch_<E>.pth``.

    Unlike the original, ``debug=True`` really shortens the run (2 epochs of 5 batches, written to
    ``<model_folder>_debug``). Returns the location of ``last.pth``.
    """
    resume = None
    if load_epoch is not None:
        opt = prepare_opt(opt_path)
        resume = storage.join(output_folder(opt), f"ckpt_epoch_{load_epoch}.pth")
    return train(opt_path, debug=debug, resume=resume)


def demo_opts(
    images_file: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    ssl_model: str = "resnet18",
    feat_dim: int = 128,
    nchannels: int = 3,
    batch_size: int = 64,
    epochs: int = 1,
    **extra: Any,
) -> Params:
    """Small, quick options for a short CPU run on a preproc file (the demo's settings).

    The model folder is ``<out_dir>/models/demo/<model_name>``. The jitter crop [40, 5] suits
    64x64 cutouts; pass ``random_cropjitter=[c, j]`` for other sizes. ``extra`` overrides any key.
    """
    values = {
        "ssl_method": "SimCLR",
        "ssl_model": ssl_model,
        "feat_dim": feat_dim,
        "nchannels": nchannels,
        "batch_size_train": batch_size,
        "batch_size_valid": batch_size,
        "num_workers": 0,
        "epochs": epochs,
        "learning_rate": 0.05,
        "lr_decay_rate": 0.1,
        "weight_decay": 1e-4,
        "momentum": 0.9,
        "temp": 0.07,
        "cosine": False,
        "warm": False,
        "trial": 0,
        "random_cropjitter": [40, 5],
        "flip": True,
        "rotate": True,
        "demean": True,
        "save_freq": 1,
        "valid_freq": 1,
        "print_freq": 10,
        "train_key": "train",
        "valid_key": "valid",
        "model_root": "demo",
        "s3_outdir": str(out_dir),
        "images_file": str(images_file),
    }
    values.update(extra)
    return prepare_opt(values)

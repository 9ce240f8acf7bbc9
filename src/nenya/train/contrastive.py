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

from nenya._errors import CheckpointError, InputError, NenyaError
from nenya.encoders.weights import load_checkpoint, strip_module
from nenya.params import Params, option_preprocess, parse_decay_epochs
from nenya.pipeline import storage
from nenya.train import _common
from nenya.train.augment import AugmentConfig, two_views
from nenya.train.data import ArrayDataset, collate_batch, load_labels, open_dataset

log = logging.getLogger(__name__)

#: Option defaults filled in when an opts file leaves a key out (None values count as missing).
DEFAULTS: dict[str, Any] = {
    "ssl_method": "SimCLR", "ssl_model": "resnet18", "feat_dim": 128, "temp": 0.07, "learning_rate": 0.05,
    "lr_decay_rate": 0.1, "weight_decay": 1e-4, "momentum": 0.9, "epochs": 1, "batch_size_train": 64,
    "trial": 0, "cosine": False, "warm": False, "train_key": "train", "valid_key": "valid", "print_freq": 10,
    "save_freq": 1, "valid_freq": 1, "num_workers": 0, "flip": True, "rotate": True, "demean": True,
    "gauss_noise": 0.0, "seed": 0,
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
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        parts = [f"epochs {self.start_epoch}-{self.epochs_done}" if self.epochs_done >= self.start_epoch
                 else "no epoch run", f"{self.steps} steps", f"{self.images} images in {self.seconds:.1f} s",
                 f"{self.images_per_s:.1f} images/s"]
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
    names (``model_name``, ``model_folder``, warm-up values) computed by ``option_preprocess``."""
    if isinstance(opt, Params):
        p = Params()
        p.__dict__.update(dict(opt.dict))
    elif isinstance(opt, dict):
        p = Params(**opt)
    else:
        p = Params(opt)
    for key, value in DEFAULTS.items():
        if getattr(p, key, None) is None:
            setattr(p, key, value)
    if getattr(p, "batch_size_valid", None) is None:
        p.batch_size_valid = p.batch_size_train
    if getattr(p, "random_cropjitter", None) is None and getattr(p, "random_jitter", None) is not None:
        p.random_cropjitter = p.random_jitter
    p.model_name = None  # recomputed from the (possibly overridden) hyper-parameters
    option_preprocess(p)
    if p.ssl_method not in ("SimCLR", "SupCon"):
        raise NenyaError(f"unknown ssl_method {p.ssl_method!r}; expected SimCLR or SupCon")
    if p.ssl_method == "SupCon" and not getattr(p, "label_column", None):
        raise NenyaError("ssl_method SupCon needs labels: set label_column to a column of <partition>_metadata "
                         "(or an integer dataset in the file), or use SimCLR")
    return p


def data_file(opt: Params) -> str:
    """``<data_folder>/<images_file>`` (either may be a URL), or ``images_file`` alone."""
    images = getattr(opt, "images_file", None)
    if not images:
        raise NenyaError("the opts name no training data: set images_file (and data_folder) to a preproc .h5 file")
    folder = getattr(opt, "data_folder", None)
    if folder and not os.path.isabs(str(images)) and not storage.is_remote(str(images)):
        return storage.join(folder, images)
    return str(images)


def output_folder(opt: Params, output: str | os.PathLike | None = None) -> str:
    """The model folder: ``output`` when given, else ``<s3_outdir or .>/<model_folder>``."""
    if output is not None:
        return str(output)
    if not opt.model_folder:
        raise NenyaError("cannot name the model folder: the opts lack model hyper-parameters; give --output")
    return storage.join(getattr(opt, "s3_outdir", None) or ".", opt.model_folder)


# --------------------------------------------------------------------------- schedules (Nenya's util)
def set_optimizer(opt: Params, model: torch.nn.Module) -> torch.optim.SGD:
    """SGD with momentum and weight decay (``learning_rate``, ``momentum``, ``weight_decay``)."""
    return torch.optim.SGD(model.parameters(), lr=float(opt.learning_rate), momentum=float(opt.momentum),
                           weight_decay=float(opt.weight_decay))


def epoch_learning_rate(opt: Params, epoch: int) -> float:
    """The learning rate of ``epoch`` (1-based): cosine to ``lr * lr_decay_rate**3``, or step decay
    by ``lr_decay_rate`` at each of ``lr_decay_epochs`` passed."""
    lr = float(opt.learning_rate)
    rate = float(opt.lr_decay_rate)
    if opt.get("cosine"):
        eta_min = lr * rate ** 3
        return eta_min + (lr - eta_min) * (1 + math.cos(math.pi * epoch / int(opt.epochs))) / 2
    steps = int(np.sum(epoch > np.asarray(parse_decay_epochs(opt.lr_decay_epochs), dtype=float)))
    return lr * rate ** steps if steps > 0 else lr


def adjust_learning_rate(opt: Params, optimizer: torch.optim.Optimizer, epoch: int) -> float:
    """Set the learning rate of ``epoch`` (Nenya's ``adjust_learning_rate``); returns it."""
    lr = epoch_learning_rate(opt, epoch)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def warmup_learning_rate(opt: Params, epoch: int, batch_id: int, total_batches: int,
                         optimizer: torch.optim.Optimizer) -> None:
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
    loss: float = float("nan")
    step_losses: list[float] = field(default_factory=list)
    avg_losses: list[float] = field(default_factory=list)
    images: int = 0
    seconds: float = 0.0
    stopped: bool = False


def _views_and_labels(batch: Any, aug: AugmentConfig | None, device: torch.device,
                      gen: torch.Generator | None, noise_gen: torch.Generator | None
                      ) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """(2B views, labels or None, B) from a raw batch, (batch, labels), or Nenya's [view1, view2]."""
    labels = None
    if isinstance(batch, (list, tuple)) and len(batch) == 2 and torch.is_tensor(batch[1]) and \
            batch[1].shape == batch[0].shape:  # two views made by the loader (nenya_loader)
        views = torch.cat([batch[0], batch[1]]).to(device, non_blocking=True).float()
        return views, None, batch[0].shape[0]
    if isinstance(batch, (list, tuple)):
        batch, labels = batch[0], batch[1].to(device, non_blocking=True)
    x = batch.to(device, non_blocking=True)
    if aug is None:
        raise ValueError("raw batches need an augmentation config")
    return two_views(x, aug, gen, noise_gen), labels, x.shape[0]


def run_epoch(loader: Any, model: torch.nn.Module, criterion: torch.nn.Module,
              optimizer: torch.optim.Optimizer | None, epoch: int, opt: Params, *, device: torch.device,
              aug: AugmentConfig | None = None, generator: torch.Generator | None = None,
              noise_generator: torch.Generator | None = None, update: bool = True,
              amp_dtype: torch.dtype | None = None, scaler: Any = None, deadline: float | None = None,
              max_batches: int | None = None, curve: _common.LearningCurve | None = None, global_step: int = 0,
              progress: bool = False, desc: str = "train") -> EpochResult:
    """One pass over ``loader``: SimCLR/SupCon loss of two views per image, SGD steps when ``update``.

    Stops early (``stopped=True``) at ``deadline`` (a ``time.monotonic()`` value) or after
    ``max_batches``. Returns the mean loss and Nenya's per-step and running-average lists.
    """
    model.train(update)
    total = len(loader) if max_batches is None else min(len(loader), max_batches)
    res = EpochResult()
    loss_sum, seen = 0.0, 0
    t0 = time.perf_counter()
    bar = tqdm(total=total, desc=desc, unit="batch", disable=not progress, leave=update, dynamic_ncols=True)
    grad = torch.enable_grad() if update else torch.no_grad()
    try:
        with grad:
            for idx, batch in enumerate(loader):
                if idx >= total:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    res.stopped = True
                    break
                views, labels, bsz = _views_and_labels(batch, aug, device, generator, noise_generator)
                if update and optimizer is not None:
                    warmup_learning_rate(opt, epoch, idx, total, optimizer)
                with _common.autocast(device, amp_dtype):
                    features = model(views)
                f1, f2 = torch.split(features.float(), [bsz, bsz], dim=0)
                features = torch.stack([f1, f2], dim=1)
                loss = criterion(features, labels) if labels is not None else criterion(features)
                if update and optimizer is not None:
                    _common.optimise(loss, optimizer, scaler)
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise NenyaError(f"the {desc} loss became {value} at epoch {epoch}, batch {idx}; lower "
                                     "learning_rate, or use fp32 / bf16 instead of fp16")
                loss_sum += value * bsz
                seen += bsz
                res.step_losses.append(value)
                res.avg_losses.append(loss_sum / seen)
                elapsed = time.perf_counter() - t0
                if curve is not None:
                    lr = optimizer.param_groups[0]["lr"] if (update and optimizer is not None) else None
                    curve.add("train_step" if update else "valid_step", epoch,
                              global_step + idx + 1 if update else idx, value, loss_avg=loss_sum / seen, lr=lr,
                              images_per_s=seen / elapsed if elapsed > 0 else None)
                bar.update(1)
                bar.set_postfix(loss=f"{value:.3f}", avg=f"{loss_sum / seen:.3f}", img_s=f"{seen / max(elapsed, 1e-9):.1f}")
                print_freq = int(opt.get("print_freq", 0) or 0)
                if print_freq and (idx + 1) % print_freq == 0:
                    log.info("%s: [%d][%d/%d] loss %.4f (%.4f) %.1f images/s", desc, epoch, idx + 1, total, value,
                             loss_sum / seen, seen / max(elapsed, 1e-9))
    finally:
        bar.close()
    res.images, res.seconds = seen, time.perf_counter() - t0
    res.loss = loss_sum / seen if seen else float("nan")
    return res


# --------------------------------------------------------------------------- data
def _loader(ds: ArrayDataset, batch_size: int, *, shuffle: bool, epoch: int, seed: int, info: _common.DistInfo,
            num_workers: int, device: torch.device) -> DataLoader:
    sampler: Any
    if info.distributed:
        sampler = torch.utils.data.distributed.DistributedSampler(ds, num_replicas=info.world, rank=info.rank,
                                                                  shuffle=shuffle, seed=seed, drop_last=shuffle)
        sampler.set_epoch(epoch)
    elif shuffle:
        sampler = RandomSampler(ds, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    else:
        sampler = SequentialSampler(ds)
    workers = 0 if ds.in_memory else min(int(num_workers), max((os.cpu_count() or 1) - 1, 0))
    drop_last = shuffle and len(ds) // max(info.world, 1) >= 2 * batch_size
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, drop_last=drop_last, num_workers=workers,
                      collate_fn=collate_batch, pin_memory=device.type == "cuda",
                      persistent_workers=False)


def _open_partitions(opt: Params, info: _common.DistInfo) -> tuple[ArrayDataset, ArrayDataset | None]:
    path = data_file(opt)
    local = storage.fetch(path)
    if not os.path.exists(local):
        raise InputError(f"training data not found: {path} (from data_folder / images_file in the opts)")
    in_memory = opt.get("data_in_memory", "auto")
    keys = _partition_names(local)
    train_key, valid_key = opt.train_key, opt.valid_key
    if train_key not in keys:
        if valid_key in keys:
            log.warning("%s has no %r partition: training on %r (and validating on it too)", path, train_key,
                        valid_key)
            train_key = valid_key
        else:
            raise InputError(f"{path} has neither {train_key!r} nor {valid_key!r}; it holds {keys}. Set train_key "
                             "and valid_key in the opts")
    train_ds = open_dataset(local, train_key, in_memory=in_memory)
    valid_ds = open_dataset(local, valid_key, in_memory=in_memory) if valid_key in keys else None
    if valid_ds is None:
        log.warning("%s has no %r partition: no validation loss", path, valid_key)
    column = getattr(opt, "label_column", None)
    if opt.ssl_method == "SupCon":
        for ds in (train_ds, valid_ds):
            if ds is not None:
                labels, names = load_labels(ds, column)
                ds.labels = torch.from_numpy(labels)
                log.info("SupCon labels from %r: %d classes (%s)", column, len(names), ", ".join(names[:8]))
    return train_ds, valid_ds


def _partition_names(local: str) -> list[str]:
    from nenya.sources.h5files import open_checked

    with open_checked(local) as f:
        return sorted(k for k in f.keys() if not k.endswith("_metadata"))


# --------------------------------------------------------------------------- the trainer
def _load_resume(path: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: Any
                 ) -> tuple[int, int]:
    ckpt = load_checkpoint(path)
    state = strip_module(ckpt["model"])
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"cannot resume from {path}: it does not fit the model of the opts "
                              f"({str(e).splitlines()[0]}); check ssl_model, feat_dim and nchannels") from None
    if ckpt.get("optimizer"):
        optimizer.load_state_dict(ckpt["optimizer"])
    else:
        log.warning("%s holds no optimiser state: momentum restarts from zero", path)
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    epoch = int(ckpt.get("epoch") or 0)
    return epoch, int(ckpt.get("step") or 0)


def train_run(opt: Params | str | os.PathLike | dict[str, Any], *, max_seconds: float | None = None,
              progress: bool = True, resume: str | os.PathLike | None = None, auto_resume: bool = False,
              output: str | os.PathLike | None = None, device: str | None = "auto", precision: str = "fp32",
              debug: bool = False, max_train_batches: int | None = None, max_valid_batches: int | None = None,
              ) -> TrainSummary:
    """Train and return a :class:`TrainSummary` (see :func:`train` for the arguments)."""
    t_start = time.monotonic()
    # the time limit covers everything: training stops at 85% of it to leave time for validation
    deadline = t_start + max_seconds if max_seconds is not None else None
    train_deadline = t_start + 0.85 * max_seconds if max_seconds is not None else None
    opt = prepare_opt(opt)
    if debug:
        max_train_batches = min(max_train_batches or DEBUG_LIMITS[0], DEBUG_LIMITS[0])
        max_valid_batches = min(max_valid_batches or DEBUG_LIMITS[1], DEBUG_LIMITS[1])
        opt.epochs = min(int(opt.epochs), DEBUG_LIMITS[2])
        log.warning("debug=True: %d epochs of at most %d batches (valid %d), written to a _debug folder",
                    opt.epochs, max_train_batches, max_valid_batches)
    info, dev = _common.setup_distributed(device if device is not None else "auto")
    folder = output_folder(opt, output)
    if debug:
        folder = folder.rstrip("/") + "_debug"
    writer = _common.CheckpointWriter(folder, enabled=info.is_main)
    seed = int(opt.seed)
    _common.seed_everything(seed)

    from nenya.train_util import set_model

    model, criterion = set_model(opt, cuda_use=False)
    model.to(dev)
    criterion.to(dev)
    if dev.type == "cuda":
        model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    optimizer = set_optimizer(opt, model)
    amp_dtype = _common.autocast_dtype(precision, dev)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None

    start_epoch, global_step = 1, 0
    if resume is None and auto_resume and storage.exists(writer.location("last.pth")):
        resume = writer.location("last.pth")
    if resume is not None:
        done, global_step = _load_resume(str(resume), model, optimizer, scaler)
        start_epoch = done + 1
        log.info("resuming from %s after epoch %d (step %d)", resume, done, global_step)
    curve_path = writer.local("learning_curve.csv")
    curve = _common.LearningCurve.read(curve_path, up_to_epoch=start_epoch - 1) if resume is not None \
        else _common.LearningCurve()

    train_model: torch.nn.Module = model
    if info.distributed:
        if opt.get("syncBN") and dev.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None)

    train_ds, valid_ds = _open_partitions(opt, info)
    aug = AugmentConfig.from_opt(opt)
    bsz = max(1, int(opt.batch_size_train) // info.world)
    vbsz = max(1, int(opt.batch_size_valid) // info.world)
    if info.is_main:
        if not writer.remote:
            os.makedirs(writer.stage, exist_ok=True)
        opt.save(writer.local("opts.json"))
        writer.publish("opts.json")
    summary = TrainSummary(last=writer.location("last.pth"), folder=folder, start_epoch=start_epoch,
                           epochs_done=start_epoch - 1, steps=global_step)
    epochs = int(opt.epochs)
    valid_freq, save_freq = int(opt.valid_freq), int(opt.save_freq)
    log.info("training %s (%s) on %s: %d images, batch %d x %d rank(s), epochs %d-%d, %s", opt.ssl_model,
             opt.ssl_method, train_ds.name, len(train_ds), bsz, info.world, start_epoch, epochs, dev)

    def save(epoch: int, names: list[str]) -> None:
        state = _common.checkpoint_state(opt, model, optimizer, epoch, step=global_step,
                                         **({"scaler": scaler.state_dict()} if scaler is not None else {}))
        summary.checkpoints += writer.save_all(state, names, curve, title=f"{opt.ssl_method} {opt.ssl_model}",
                                               steps_per_epoch=steps_per_epoch, is_main=info.is_main)

    steps_per_epoch = None
    epoch = start_epoch - 1
    try:
        for epoch in range(start_epoch, epochs + 1):
            loader = _loader(train_ds, bsz, shuffle=True, epoch=epoch, seed=seed, info=info,
                             num_workers=int(opt.num_workers), device=dev)
            steps_per_epoch = len(loader) if max_train_batches is None else min(len(loader), max_train_batches)
            lr = adjust_learning_rate(opt, optimizer, epoch)
            gen = torch.Generator().manual_seed(seed * 7919 + epoch * 104729 + info.rank)
            noise_gen = torch.Generator(device=dev).manual_seed(seed * 31 + epoch * 131 + info.rank)
            res = run_epoch(loader, train_model, criterion, optimizer, epoch, opt, device=dev, aug=aug,
                            generator=gen, noise_generator=noise_gen, update=True, amp_dtype=amp_dtype,
                            scaler=scaler, deadline=train_deadline if valid_ds is not None else deadline,
                            max_batches=max_train_batches,
                            curve=curve if info.is_main else None, global_step=global_step,
                            progress=progress and info.is_main, desc=f"epoch {epoch}/{epochs}")
            global_step += len(res.step_losses)
            summary.steps, summary.images = global_step, summary.images + res.images * info.world
            summary.seconds += res.seconds
            if not res.step_losses:  # the time ran out before this epoch's first batch
                summary.stopped_early = True
                epoch -= 1
                break
            (mean_loss,) = _common.all_reduce_mean([res.loss], dev)
            summary.train_loss, summary.epochs_done = mean_loss, epoch
            if info.is_main:
                curve.add("train_epoch", epoch, global_step, mean_loss, lr=lr,
                          images_per_s=res.images * info.world / max(res.seconds, 1e-9))
            log.info("epoch %d: train loss %.4f, %.1f s, %.1f images/s%s", epoch, mean_loss, res.seconds,
                     res.images * info.world / max(res.seconds, 1e-9), " (stopped at the time limit)" if res.stopped
                     else "")
            if valid_ds is not None and epoch % valid_freq == 0 and not (deadline and time.monotonic() > deadline):
                vloader = _loader(valid_ds, vbsz, shuffle=False, epoch=0, seed=seed, info=info,
                                  num_workers=int(opt.num_workers), device=dev)
                vgen = torch.Generator().manual_seed(seed + 12345 + info.rank)
                vnoise = torch.Generator(device=dev).manual_seed(seed + 54321 + info.rank)
                vres = run_epoch(vloader, model, criterion, None, epoch, opt, device=dev, aug=aug, generator=vgen,
                                 noise_generator=vnoise, update=False, amp_dtype=amp_dtype, deadline=deadline,
                                 max_batches=max_valid_batches, curve=curve if info.is_main else None,
                                 progress=progress and info.is_main, desc=f"valid {epoch}")
                if vres.step_losses:
                    (vloss,) = _common.all_reduce_mean([vres.loss], dev)
                    summary.valid_loss = vloss
                    if info.is_main:
                        curve.add("valid_epoch", epoch, global_step, vloss)
                    log.info("epoch %d: valid loss %.4f", epoch, vloss)
            if res.stopped:
                summary.stopped_early = True
                break
            names = ["last.pth"]
            if epoch % save_freq == 0:
                names.insert(0, f"ckpt_epoch_{epoch}.pth")
            save(epoch, names)
        if summary.stopped_early or not storage.exists(writer.location("last.pth")):
            save(max(epoch, start_epoch - 1), ["last.pth"])
    finally:
        train_ds.close()
        if valid_ds is not None:
            valid_ds.close()
        if info.distributed and torch.distributed.is_initialized():
            torch.distributed.barrier()
    return summary


def train(opt: Params | str | os.PathLike | dict[str, Any], *, max_seconds: float | None = None,
          progress: bool = True, **kwargs: Any) -> str:
    """Train SupConResNet on the opts' data; return the location of ``last.pth``.

    Args:
        opt: a Params, a dict of options, or an opts JSON path (Nenya's keys; see docs/training.md).
        max_seconds: stop after this many seconds (the current epoch is cut short, validated within
            the remaining time, and saved as ``last.pth``); None trains all ``epochs``.
        progress: show a tqdm bar with the loss and images/s.
        **kwargs: ``resume`` (a checkpoint), ``auto_resume`` (continue from the folder's last.pth),
            ``output`` (model folder instead of ``<s3_outdir>/<model_folder>``), ``device``
            (auto, cpu, cuda), ``precision`` (fp32, bf16, fp16), ``debug``, ``max_train_batches``,
            ``max_valid_batches``.

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


def demo_opts(images_file: str | os.PathLike, out_dir: str | os.PathLike, *, ssl_model: str = "resnet18",
              feat_dim: int = 128, nchannels: int = 3, batch_size: int = 64, epochs: int = 1, **extra: Any) -> Params:
    """Small, quick options for a short CPU run on a preproc file (the demo's settings).

    The model folder is ``<out_dir>/models/demo/<model_name>``. The jitter crop [40, 5] suits
    64x64 cutouts; pass ``random_cropjitter=[c, j]`` for other sizes. ``extra`` overrides any key.
    """
    values = {
        "ssl_method": "SimCLR", "ssl_model": ssl_model, "feat_dim": feat_dim, "nchannels": nchannels,
        "batch_size_train": batch_size, "batch_size_valid": batch_size, "num_workers": 0, "epochs": epochs,
        "learning_rate": 0.05, "lr_decay_rate": 0.1, "weight_decay": 1e-4, "momentum": 0.9, "temp": 0.07,
        "cosine": False, "warm": False, "trial": 0, "random_cropjitter": [40, 5], "flip": True, "rotate": True,
        "demean": True, "save_freq": 1, "valid_freq": 1, "print_freq": 10, "train_key": "train",
        "valid_key": "valid", "model_root": "demo", "s3_outdir": str(out_dir), "images_file": str(images_file),
    }
    values.update(extra)
    return prepare_opt(values)

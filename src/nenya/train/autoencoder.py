"""Training of the convolutional autoencoder (radar-image recipe), the overfit search, and reconstruction.

Images (a preproc HDF5 partition, a ``.npy`` array, or an image folder) are cropped to
``crop``, normalised (optional per-image demean; per-channel mean/std of the training set), and
the autoencoder is fitted with the LogCosh loss and Adam for ``num_steps`` steps of random batches.
Every ``num_steps / num_checkpoints`` steps (a "virtual epoch") it writes ``ckpt_epoch_<E>.pth`` and
``last.pth`` with the architecture and preprocessing in ``opt``, so ``ae:last.pth`` extracts with it.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler
from tqdm.auto import tqdm

from nenya._errors import CheckpointError, InputError, NenyaError
from nenya.device import autocast
from nenya.encoders.autoencoder import AutoencoderEncoder, build_autoencoder, crop_batch
from nenya.encoders.weights import fit_state, load_checkpoint
from nenya.models.autoencoder import ConvAutoencoder, pooled_size
from nenya.params import Params, read_json
from nenya.pipeline import storage
from nenya.ranks import Ranks
from nenya.sources import RecordOptions
from nenya.train import common
from nenya.train.data import ArrayDataset, collate_batch, open_dataset, split_data_spec

log = logging.getLogger(__name__)


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


def logcosh(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean log(cosh(pred - target)), computed stably as ``|d| + softplus(-2|d|) - log 2``."""
    d = (pred - target).float().abs()
    return (d + torch.nn.functional.softplus(-2.0 * d) - math.log(2.0)).mean()


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


@dataclass
class AutoencoderSummary:
    """What an autoencoder run did."""

    last: str
    folder: str
    steps: int = 0
    epochs_done: int = 0
    first_loss: float | None = None
    final_loss: float | None = None
    seconds: float = 0.0
    images: int = 0
    stopped_early: bool = False
    checkpoints: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One line for the CLI: steps, speed, loss from first to last."""
        rate = self.images / self.seconds if self.seconds else 0.0
        out = f"{self.steps} steps ({self.epochs_done} checkpoints), {rate:.1f} images/s"
        if self.first_loss is not None and self.final_loss is not None:
            out += f", loss {self.first_loss:.4g} -> {self.final_loss:.4g}"
        if self.stopped_early:
            out += ", stopped at the time limit"
        return out


@dataclass
class _AERun:
    """The state the steps of one autoencoder run share (made by :func:`_ae_start`)."""

    opt: Params
    ranks: Ranks
    device: torch.device
    writer: common.CheckpointWriter
    ds: ArrayDataset
    model: ConvAutoencoder
    train_model: torch.nn.Module
    helper: AutoencoderEncoder
    optimizer: torch.optim.Optimizer
    amp_dtype: torch.dtype | None
    scaler: Any
    curve: common.LearningCurve
    summary: AutoencoderSummary
    step: int
    per_epoch: int
    deadline: float | None
    epoch_losses: list[float] = field(default_factory=list)

    @property
    def num_steps(self) -> int:
        """The step budget of the run."""
        return int(self.opt.num_steps)


def _ae_data(cfg: AutoencoderConfig) -> tuple[ArrayDataset, list[int]]:
    """The training images (the first ``n_images`` when set) and the crop box of ``cfg``."""
    assert cfg.data is not None, "checked by train_autoencoder"
    records = RecordOptions(feature=cfg.feature, shape=cfg.shape)
    ds = open_dataset(cfg.data, cfg.partition, in_memory=cfg.in_memory, records=records)
    if cfg.n_images is not None:
        ds = ArrayDataset(ds.path, ds.key, in_memory=cfg.in_memory, indices=np.arange(min(cfg.n_images, len(ds))))
    _, h, w = ds.image_shape
    return ds, crop_box(cfg, h, w)


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


def _ae_model(
    opt: Params, ckpt: dict[str, Any] | None, dev: torch.device, source: str
) -> tuple[ConvAutoencoder, torch.optim.Optimizer, int]:
    """The autoencoder of ``opt`` on ``dev``, its Adam optimiser and the step it starts from
    (the checkpoint's weights, loaded by :func:`fit_state`, and state when resuming)."""
    model = build_autoencoder(opt).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=float(opt.learning_rate))
    if ckpt is None:
        return model, optimizer, 0
    fit_state(
        model,
        ckpt["model"],
        source=f"cannot resume: {source}",
        what="the autoencoder of its options",
        advice="The checkpoint is damaged or was not written by `nenya train autoencoder`.",
    )
    if ckpt.get("optimizer"):
        optimizer.load_state_dict(ckpt["optimizer"])
    step = int(ckpt.get("step") or 0)
    log.info("resuming from %s at step %d", source, step)
    return model, optimizer, step


def _ae_start(
    cfg: AutoencoderConfig,
    *,
    resume: str | os.PathLike | None,
    auto_resume: bool,
    device: str,
    precision: str,
    deadline: float | None,
) -> _AERun:
    """Everything before the first step: ranks and device, data, options, model, curve, opts.json."""
    ranks, dev = common.setup_distributed(device)
    writer = common.CheckpointWriter(cfg.output, enabled=ranks.is_main)
    common.seed_everything(cfg.seed)
    ds, box = _ae_data(cfg)
    if resume is None and auto_resume and storage.exists(writer.location("last.pth")):
        resume = writer.location("last.pth")
    opt, ckpt = _ae_options(cfg, ds, box, resume)
    model, optimizer, step = _ae_model(opt, ckpt, dev, str(resume))
    helper = AutoencoderEncoder(model, opt, fingerprint="train", name="train")
    amp_dtype = common.autocast_dtype(precision, dev)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    train_model: torch.nn.Module = model
    if ranks.distributed:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None
        )
    per_epoch = max(1, int(opt.num_steps) // max(1, int(opt.num_checkpoints)))
    curve = (
        common.LearningCurve.read(writer.local("learning_curve.csv"), up_to_epoch=step // per_epoch)
        if ckpt is not None
        else common.LearningCurve()
    )
    summary = AutoencoderSummary(
        last=writer.location("last.pth"), folder=cfg.output, steps=step, epochs_done=step // per_epoch
    )
    if ranks.is_main:
        with open(writer.local("opts.json"), "w") as f:
            json.dump(opt.dict, f, indent=2)
        writer.publish("opts.json")
    return _AERun(
        opt,
        ranks,
        dev,
        writer,
        ds,
        model,
        train_model,
        helper,
        optimizer,
        amp_dtype,
        scaler,
        curve,
        summary,
        step,
        per_epoch,
        deadline,
    )


def _ae_loader(run: _AERun, cfg: AutoencoderConfig) -> tuple[DataLoader, int]:
    """Random batches (with replacement) for the steps left; returns ``(loader, steps left)``."""
    ds, ranks = run.ds, run.ranks
    remaining = max(0, run.num_steps - run.step)
    bsz = max(1, int(run.opt.batch_size) // ranks.world)
    gen = torch.Generator().manual_seed(int(cfg.seed) * 1_000_003 + run.step)
    if ranks.distributed:  # each rank draws its own random batches
        gen.manual_seed(int(cfg.seed) * 1_000_003 + run.step + 7919 * ranks.rank)
    sampler = RandomSampler(ds, replacement=True, num_samples=max(1, remaining * bsz), generator=gen)
    workers = 0 if ds.in_memory else min(cfg.num_workers, max((os.cpu_count() or 1) - 1, 0))
    loader = DataLoader(
        ds,
        batch_size=bsz,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_batch,
        pin_memory=run.device.type == "cuda",
    )
    log.info(
        "autoencoder %s -> %d numbers on %s: %d images %s, crop %s, %d steps of %d",
        run.opt.input_shape,
        run.opt.num_dense,
        run.device,
        len(ds),
        list(ds.image_shape),
        run.opt.crop_box,
        remaining,
        bsz,
    )
    return loader, remaining


def _ae_save(run: _AERun, epoch: int) -> None:
    """Save the run as ``ckpt_epoch_<epoch>.pth`` and ``last.pth`` (and the learning curve)."""
    state = common.checkpoint_state(run.opt, run.model, run.optimizer, epoch, step=run.step)
    run.summary.checkpoints += run.writer.save_all(
        state,
        [f"ckpt_epoch_{epoch}.pth", "last.pth"],
        run.curve,
        title="autoencoder (LogCosh)",
        steps_per_epoch=run.per_epoch,
        is_main=run.ranks.is_main,
    )
    if run.ranks.is_main:
        name = f"reconstruction_epoch_{epoch}.png"
        _reconstruction_panels(run, run.writer.local(name), f"step {run.step}")
        run.writer.publish(name)


def _reconstruction_panels(run: _AERun, path: str, when: str, n: int = 6) -> str:
    """Inputs (as the model sees them: cropped, normalised) over their reconstructions, for ``n``
    fixed images spread over the data, so the panels of every checkpoint compare."""
    from nenya.analysis.plots import image_rows

    rows = np.linspace(0, len(run.ds) - 1, min(n, len(run.ds))).round().astype(np.int64)
    batch = run.ds.__getitems__(rows)
    x = run.helper.prepare((batch[0] if isinstance(batch, tuple) else batch).to(run.device))
    was_training = run.model.training
    run.model.eval()
    with torch.no_grad():
        out = run.model(x).float()
    run.model.train(was_training)
    inputs = [im[0] for im in x.float().cpu().numpy()]
    recon = [im[0] for im in out.cpu().numpy()]
    titles = ["input (cropped, normalised)", "reconstruction"]
    return image_rows([inputs, recon], titles, path, title=f"autoencoder at {when}: rows {rows.tolist()}")


def _ae_step(run: _AERun, batch: Any) -> tuple[float, int]:
    """One Adam step on a batch; returns ``(loss, images)``."""
    x = batch[0] if isinstance(batch, tuple) else batch
    x = run.helper.prepare(x.to(run.device, non_blocking=True))
    with autocast(run.device, run.amp_dtype):
        out = run.train_model(x)
    loss = logcosh(out, x)
    common.optimise(loss, run.optimizer, run.scaler)
    run.step += 1
    value = float(loss.detach())
    if not math.isfinite(value):
        raise NenyaError(
            f"the autoencoder loss became {value} at step {run.step}; lower learning_rate or check the data for NaNs"
        )
    return value, x.shape[0]


def _ae_record(run: _AERun, value: float, images: int, bar: Any, elapsed: float) -> None:
    """Count one step in the summary, curve and bar; at each virtual epoch's end, checkpoint."""
    summary, step = run.summary, run.step
    summary.first_loss = value if summary.first_loss is None else summary.first_loss
    summary.images += images * run.ranks.world
    run.epoch_losses.append(value)
    epoch = (step - 1) // run.per_epoch + 1
    if run.ranks.is_main:
        run.curve.add(
            "train_step",
            epoch,
            step,
            value,
            lr=run.optimizer.param_groups[0]["lr"],
            images_per_s=summary.images / max(elapsed, 1e-9),
        )
    bar.update(1)
    bar.set_postfix(loss=f"{value:.4g}", img_s=f"{summary.images / max(elapsed, 1e-9):.1f}")
    if step % run.per_epoch == 0 or step == run.num_steps:
        (mean_loss,) = common.all_reduce_mean([float(np.mean(run.epoch_losses))], run.device)
        if run.ranks.is_main:
            run.curve.add("train_epoch", epoch, step, mean_loss)
        log.info("checkpoint %d at step %d: loss %.5g", epoch, step, mean_loss)
        run.epoch_losses = []
        summary.epochs_done = epoch
        _ae_save(run, epoch)


def _ae_loop(run: _AERun, loader: DataLoader, remaining: int, progress: bool) -> None:
    """Step through ``loader`` until ``num_steps`` or the deadline; closes the data."""
    run.model.train()
    bar = tqdm(
        total=run.num_steps,
        initial=run.step,
        desc="autoencoder",
        unit="step",
        disable=not (progress and run.ranks.is_main),
        dynamic_ncols=True,
    )
    t0 = time.perf_counter()
    try:
        for batch in loader if remaining else []:
            if run.deadline is not None and time.monotonic() > run.deadline:
                run.summary.stopped_early = True
                break
            value, images = _ae_step(run, batch)
            _ae_record(run, value, images, bar, time.perf_counter() - t0)
            if run.step >= run.num_steps:
                break
    finally:
        bar.close()
        run.ds.close()
    run.summary.steps = run.step
    run.summary.seconds = time.perf_counter() - t0


def _ae_finish(run: _AERun) -> None:
    """The final loss, and ``last.pth`` when the run stopped early or saved none."""
    summary = run.summary
    train_steps = [r["loss"] for r in run.curve.rows if r["kind"] == "train_step"]
    if run.epoch_losses:
        summary.final_loss = float(np.mean(run.epoch_losses[-5:]))
    elif run.curve.rows:
        summary.final_loss = train_steps[-1] if train_steps else None
    if summary.stopped_early or not storage.exists(run.writer.location("last.pth")):
        summary.epochs_done = max(summary.epochs_done, math.ceil(run.step / run.per_epoch))
        _ae_save(run, summary.epochs_done)
    if summary.final_loss is None:
        summary.final_loss = summary.first_loss


def train_autoencoder(
    cfg: AutoencoderConfig,
    *,
    resume: str | os.PathLike | None = None,
    auto_resume: bool = False,
    device: str = "auto",
    precision: str = "fp32",
    max_seconds: float | None = None,
    progress: bool = True,
) -> AutoencoderSummary:
    """Train the autoencoder of ``cfg``; returns an :class:`AutoencoderSummary` (``.last`` is last.pth).

    Example:
        >>> cfg = AutoencoderConfig(data="radar.npy", nlayers=4, poolsize=4, numfilters=4, num_dense=50,
        ...                         crop=[1024, None], num_steps=2000)
        >>> train_autoencoder(cfg).last        # doctest: +SKIP
        'ae-model/last.pth'
    """
    if not cfg.data:
        raise NenyaError("say which images to train on: --data file.h5[:partition], images.npy or a folder")
    deadline = time.monotonic() + max_seconds if max_seconds is not None else None
    run = _ae_start(cfg, resume=resume, auto_resume=auto_resume, device=device, precision=precision, deadline=deadline)
    loader, remaining = _ae_loader(run, cfg)
    _ae_loop(run, loader, remaining, progress)
    _ae_finish(run)
    return run.summary


# --------------------------------------------------------------------------- overfit search
@dataclass
class OverfitRow:
    """One setting of the overfit search and how it did."""

    nlayers: int
    poolsize: int
    numfilters: int
    num_dense: int
    params: int = 0
    final_loss: float = float("nan")
    reaches: bool = False
    chosen: bool = False
    note: str = ""


@dataclass
class OverfitResult:
    """The settings tried, the loss threshold, and the chosen (smallest fitting) setting."""

    rows: list[OverfitRow]
    threshold: float
    best: OverfitRow | None

    def table(self) -> str:
        """The rows as an aligned text table (the chosen one marked with *)."""
        head = f"{'':1s} {'nlayers':>7s} {'pool':>4s} {'filters':>7s} {'dense':>5s} {'params':>9s} {'final loss':>11s}  reaches"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            loss = f"{r.final_loss:11.5g}" if math.isfinite(r.final_loss) else f"{'-':>11s}"
            lines.append(
                f"{'*' if r.chosen else ' '} {r.nlayers:7d} {r.poolsize:4d} {r.numfilters:7d} "
                f"{r.num_dense:5d} {r.params:9d} {loss}  {'yes' if r.reaches else 'no'}"
                + (f"  ({r.note})" if r.note else "")
            )
        if self.best is None:
            lines.append(
                f"no setting reached the threshold {self.threshold:g}: train longer (--num-steps) or widen the grid"
            )
        else:
            b = self.best
            lines.append(
                f"smallest embedding reaching {self.threshold:g}: nlayers {b.nlayers}, poolsize {b.poolsize}, "
                f"numfilters {b.numfilters}, num_dense {b.num_dense} (loss {b.final_loss:.5g})"
            )
        return "\n".join(lines)

    def write_csv(self, path: str | os.PathLike) -> None:
        """The rows as CSV (folders created)."""
        fields = [f.name for f in dataclasses.fields(OverfitRow)]
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with storage.atomic_local(str(path)) as tmp:
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=fields)
                w.writeheader()
                for r in self.rows:
                    w.writerow(dataclasses.asdict(r))


def _overfit_input(raw: torch.Tensor, box: list[int], demean: bool, standardize: bool) -> torch.Tensor:
    """The images of an overfit test as the model sees them: cropped, scaled, demeaned, standardised."""
    x = crop_batch(raw, box).float()
    if raw.dtype == torch.uint8:
        x = x / 255.0
    if x.dim() == 3:
        x = x[:, None]
    if demean:
        x = x - x.mean(dim=(1, 2, 3), keepdim=True)
    if standardize:
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = x.std(dim=(0, 2, 3), keepdim=True, unbiased=False).clamp_min(1e-12)
        x = (x - mean) / std
    return x


def _overfit_one(row: OverfitRow, x: torch.Tensor, *, num_steps: int, learning_rate: float, seed: int) -> None:
    """Fit a fresh autoencoder of ``row``'s architecture to ``x`` (one full batch); fill ``params``
    and ``final_loss`` (the LogCosh loss of ``x`` after training)."""
    torch.manual_seed(seed)
    model = ConvAutoencoder(
        list(x.shape[1:]),
        nlayers=row.nlayers,
        poolsize=row.poolsize,
        numfilters=row.numfilters,
        num_dense=row.num_dense,
    ).to(x.device)
    row.params = sum(p.numel() for p in model.parameters())
    optim = torch.optim.Adam(model.parameters(), lr=learning_rate)
    model.train()
    for _ in range(num_steps):
        loss = logcosh(model(x), x)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
    model.eval()
    with torch.no_grad():
        row.final_loss = float(logcosh(model(x), x))


def overfit_search(
    data: str,
    *,
    partition: str = "train",
    n_images: int = 4,
    nlayers: list[int] | tuple[int, ...] = (2, 3, 4),
    poolsize: list[int] | tuple[int, ...] = (2, 4),
    numfilters: list[int] | tuple[int, ...] = (2, 4),
    num_dense: list[int] | tuple[int, ...] = (10, 50, 100),
    num_steps: int = 300,
    threshold: float = 0.01,
    learning_rate: float = 1e-3,
    crop: Any = None,
    crop_offset: tuple[int, int] = (0, 0),
    demean: bool = False,
    standardize: bool = True,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
    output: str | os.PathLike | None = None,
) -> OverfitResult:
    """Overfit a handful of images with each architecture of a grid; keep the smallest embedding that fits.

    Each setting trains a fresh autoencoder (seed ``seed``) on the first ``n_images`` images, as one
    full batch, for ``num_steps`` Adam steps; its final loss is the LogCosh loss of those images after
    training. The chosen setting is the one with the fewest ``num_dense`` whose loss is at most
    ``threshold`` (ties: fewer parameters, then lower loss). The table goes to ``output`` as CSV.
    """
    _, dev = common.setup_distributed(device)
    ds = open_dataset(data, partition, in_memory=True)
    n = min(n_images, len(ds))
    raw = ds.__getitems__(np.arange(n))
    raw = raw[0] if isinstance(raw, tuple) else raw
    ds.close()
    grid = list(
        itertools.product(sorted(set(nlayers)), sorted(set(poolsize)), sorted(set(numfilters)), sorted(set(num_dense)))
    )
    rows: list[OverfitRow] = []
    bar = tqdm(grid, desc="overfit search", unit="setting", disable=not progress, dynamic_ncols=True)
    for nl, ps, nf, nd in bar:
        row = OverfitRow(nl, ps, nf, nd)
        rows.append(row)
        cfg = AutoencoderConfig(
            data=data,
            nlayers=nl,
            poolsize=ps,
            numfilters=nf,
            num_dense=nd,
            crop=crop,
            crop_offset=(int(crop_offset[0]), int(crop_offset[1])),
            demean=demean,
            standardize=standardize,
        )
        h, w = raw.shape[-2:]
        try:
            box = crop_box(cfg, h, w)
        except InputError as e:
            row.note = str(e).split(";")[0]
            continue
        if pooled_size(box[1] - box[0], ps, nl) < 1 or pooled_size(box[3] - box[2], ps, nl) < 1:
            row.note = f"image too small for {nl} layers of pool {ps}"
            continue
        x = _overfit_input(raw, box, demean, standardize).to(dev)
        _overfit_one(row, x, num_steps=num_steps, learning_rate=learning_rate, seed=seed)
        row.reaches = math.isfinite(row.final_loss) and row.final_loss <= threshold
        bar.set_postfix(loss=f"{row.final_loss:.4g}")
    bar.close()
    fits = [r for r in rows if r.reaches]
    best = min(fits, key=lambda r: (r.num_dense, r.params, r.final_loss)) if fits else None
    if best is not None:
        best.chosen = True
    result = OverfitResult(rows, threshold, best)
    if output is not None:
        result.write_csv(output)
    return result


# --------------------------------------------------------------------------- reconstruction
def load_autoencoder(path: str | os.PathLike, *, trust_checkpoint: bool = False) -> AutoencoderEncoder:
    """The :class:`AutoencoderEncoder` of a checkpoint (its ``.autoencoder`` also decodes)."""
    return AutoencoderEncoder.from_checkpoint(path, trust_checkpoint=trust_checkpoint)


def read_input(spec: str) -> np.ndarray:
    """An array from ``x.npy``, ``x.npy:ROW`` or a preproc reference ``file.h5:PARTITION:ROW``."""
    path, key, row = split_data_spec(spec)
    local = storage.fetch(path)
    if not os.path.exists(local):
        raise InputError(f"input not found: {path}")
    if local.endswith(".npy"):
        arr = np.load(local)
        return arr[row] if row is not None else arr
    if local.endswith((".h5", ".hdf5")):
        if key is None or row is None:
            raise InputError(f"name one image of {path} as {path}:PARTITION:ROW, e.g. {path}:valid:12")
        from nenya.sources.h5files import open_checked

        with open_checked(local) as f:
            if key not in f:
                raise InputError(f"{path} has no partition {key!r}; it holds {sorted(f.keys())}")
            if not 0 <= row < f[key].shape[0]:
                raise InputError(f"{path}:{key} has {f[key].shape[0]} rows; row {row} does not exist")
            return np.asarray(f[key][row])
    raise InputError(f"cannot read {spec}: expected a .npy file or file.h5:PARTITION:ROW")


@dataclass
class Reconstruction:
    """What :func:`reconstruct` wrote: the .npy, the PNGs, the shape and the input kind."""

    npy: str
    pngs: list[str]
    shape: tuple[int, ...]
    kind: str


def _as_images(arr: np.ndarray) -> tuple[np.ndarray, bool]:
    """Images as (N, C, H, W), and whether the input was one image."""
    if arr.ndim == 2:
        return arr[None, None], True
    if arr.ndim == 3:
        return arr[None], True
    if arr.ndim != 4:
        raise InputError(f"images must be (H, W), (C, H, W) or (N, C, H, W); got {arr.shape}")
    return arr, False


def _decode(enc: AutoencoderEncoder, arr: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray, str, bool]:
    """Decode an embedding, or an image through its embedding, back to the input's units.

    Returns:
        ``(reconstruction (N, C, h, w) float32, the input as decoded (images as (N, C, H, W)),
        the kind, whether the input was one item)``.
    """
    opt = enc.opt
    nd = int(opt.num_dense)
    if kind == "auto":
        image_like = arr.ndim >= 2 and tuple(arr.shape[-2:]) in (tuple(opt.raw_shape[1:]), tuple(opt.input_shape[1:]))
        kind = "embedding" if arr.ndim in (1, 2) and arr.shape[-1] == nd and not image_like else "image"
    offset = None
    if kind == "embedding":
        if arr.shape[-1] != nd or arr.ndim not in (1, 2):
            raise InputError(f"an embedding must be ({nd},) or (N, {nd}) for this model; got {arr.shape}")
        single = arr.ndim == 1
        z = torch.as_tensor(np.atleast_2d(arr), dtype=torch.float32, device=enc.device)
    elif kind == "image":
        arr, single = _as_images(arr)
        x = torch.as_tensor(arr)
        z = enc.encode(x)
        if enc.preprocess.demean:
            cropped = crop_batch(x, enc.crop_box).float()
            cropped = cropped / 255.0 if x.dtype == torch.uint8 else cropped
            offset = cropped.mean(dim=(1, 2, 3), keepdim=True)
    else:
        raise ValueError(f"kind must be auto, embedding or image; got {kind!r}")
    with torch.inference_mode():
        out = enc.autoencoder.eval().decode(z.float()).float().cpu()
    pre = enc.preprocess
    if pre.std is not None:
        out = out * torch.tensor(pre.std).view(1, -1, 1, 1)
    if pre.mean is not None:
        out = out + torch.tensor(pre.mean).view(1, -1, 1, 1)
    if offset is not None:
        out = out + offset.cpu()
    return out.numpy().astype(np.float32), arr, kind, single


def _write_pngs(stem: str, imgs: np.ndarray, cmap: str) -> list[str]:
    """Channel 0 of (up to 16 of) the reconstructions as PNGs."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    pngs = []
    for i, img in enumerate(imgs[:16]):
        png = f"{stem}.png" if len(imgs) == 1 else f"{stem}_{i}.png"
        ch0 = img[0]
        lim = float(np.abs(ch0).max()) or 1.0
        plt.imsave(png, ch0, cmap=cmap, vmin=-lim if ch0.min() < 0 else ch0.min(), vmax=lim)
        pngs.append(png)
    return pngs


def _write_compare(path: str, enc: AutoencoderEncoder, images: np.ndarray, recon: np.ndarray, cmap: str) -> None:
    """The first input (cropped) beside its reconstruction, on the input's colour scale."""
    from matplotlib.figure import Figure

    src = crop_batch(torch.as_tensor(images), enc.crop_box).float().numpy()
    src = src / 255.0 if images.dtype == np.uint8 else src
    fig = Figure(figsize=(8, 4), dpi=100)
    for j, (title, im) in enumerate((("input (cropped)", src[0, 0]), ("reconstruction", recon[0]))):
        ax = fig.add_subplot(1, 2, j + 1)
        ax.imshow(im, cmap=cmap, vmin=float(src[0, 0].min()), vmax=float(src[0, 0].max()))
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)


def reconstruct(
    checkpoint: str | os.PathLike,
    input: str | np.ndarray,
    output: str | os.PathLike,
    *,
    kind: str = "auto",
    device: str = "cpu",
    trust_checkpoint: bool = False,
    cmap: str = "RdBu_r",
) -> Reconstruction:
    """Decode an embedding, or an image through its embedding, back into an image; save .npy and PNG.

    Args:
        checkpoint: an autoencoder ``last.pth``.
        input: an array, ``x.npy`` (an embedding (num_dense,) / (N, num_dense), or images (H, W),
            (C, H, W), (N, C, H, W)), ``x.npy:ROW`` or ``file.h5:PARTITION:ROW``.
        output: ``out.npy`` or a stem; writes ``<stem>.npy`` and ``<stem>.png`` (``<stem>_<i>.png``
            for several), plus ``<stem>_compare.png`` (input | reconstruction) for image inputs.
        kind: ``auto``, ``embedding`` or ``image``.

    The reconstruction is returned in the input's units: the training mean/std is undone, and for
    models trained with ``demean`` an image input's own mean is added back (an embedding has none).
    Images come out at the cropped size the model was trained on, shape (C, h, w) or (N, C, h, w).
    """
    enc = load_autoencoder(checkpoint, trust_checkpoint=trust_checkpoint).to(device, "fp32", channels_last=False)
    arr = read_input(input) if isinstance(input, (str, os.PathLike)) else np.asarray(input)
    out, arr, kind, single = _decode(enc, arr, kind)
    result = out[0] if single else out
    stem = str(output)[:-4] if str(output).endswith(".npy") else str(output)
    os.makedirs(os.path.dirname(os.path.abspath(stem)) or ".", exist_ok=True)
    np.save(stem + ".npy", result)
    imgs = result[None] if single else result
    pngs = _write_pngs(stem, imgs, cmap)
    if kind == "image":
        _write_compare(f"{stem}_compare.png", enc, arr, imgs[0], cmap)
        pngs.append(f"{stem}_compare.png")
    return Reconstruction(npy=stem + ".npy", pngs=pngs, shape=tuple(result.shape), kind=kind)

"""Training the autoencoder: a run's state and start, the steps, the checkpoints and the entry point
:func:`train_autoencoder`."""

from __future__ import annotations

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

from nenya._errors import NenyaError
from nenya.device import autocast
from nenya.encoders.autoencoder import AutoencoderEncoder, build_autoencoder
from nenya.models.autoencoder import ConvAutoencoder
from nenya.params import Params
from nenya.pipeline import storage
from nenya.ranks import Ranks
from nenya.sources import RecordOptions
from nenya.train import common
from nenya.train.autoencoder.options import AutoencoderConfig, _ae_options, crop_box
from nenya.train.data import ArrayDataset, collate_batch, loader_workers, open_dataset
from nenya.train.losses import logcosh

#: the package's logger: the log names the messages as before the trainer became a package
log = logging.getLogger("nenya.train.autoencoder")


@dataclass
class AutoencoderSummary:
    """What an autoencoder run did."""

    last: str
    folder: str
    #: the step count at the end (a resumed run's steps included) and at the start
    steps: int = 0
    start_step: int = 0
    epochs_done: int = 0
    #: the loss of this run's first and last batch
    first_loss: float | None = None
    final_loss: float | None = None
    #: the mean loss of the batches of the last checkpoint's epoch, and that checkpoint's number
    epoch_mean: float | None = None
    epoch_mean_checkpoint: int = 0
    seconds: float = 0.0
    images: int = 0
    stopped_early: bool = False
    checkpoints: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One line for the CLI: this run's steps, speed, its first and last batch's loss, the last epoch's mean.

        Example: ``40 steps, 2 checkpoints, 812.5 images/s, first batch loss 0.3019 -> last batch 0.1218;
        epoch mean 0.1389 (checkpoint 2)``.
        """
        rate = self.images / self.seconds if self.seconds else 0.0
        done = self.steps - self.start_step
        out = f"{done} steps" + (f" (steps {self.start_step + 1}-{self.steps})" if self.start_step and done else "")
        out += f", {self.epochs_done} checkpoints, {rate:.1f} images/s"
        if self.first_loss is not None and self.final_loss is not None:
            out += f", first batch loss {self.first_loss:.4g} -> last batch {self.final_loss:.4g}"
        if self.epoch_mean is not None:
            out += f"; epoch mean {self.epoch_mean:.4g} (checkpoint {self.epoch_mean_checkpoint})"
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


def _ae_model(
    opt: Params, ckpt: dict[str, Any] | None, dev: torch.device, source: str
) -> tuple[ConvAutoencoder, torch.optim.Optimizer, int]:
    """The autoencoder of ``opt`` on ``dev``, its Adam optimiser and the step it starts from
    (the checkpoint's weights and state, loaded by :func:`common.resume_state`, when resuming)."""
    model = build_autoencoder(opt).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=float(opt.learning_rate))
    if ckpt is None:
        return model, optimizer, 0
    _, step = common.resume_state(
        ckpt,
        source,
        model,
        optimizer,
        what="the autoencoder of its options",
        advice="The checkpoint is damaged or was not written by `nenya train autoencoder`.",
    )
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
    resume = common.resume_location(writer, resume, auto_resume)
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
        last=writer.location("last.pth"),
        folder=cfg.output,
        steps=step,
        start_step=step,
        epochs_done=step // per_epoch,
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
    workers = loader_workers(ds, cfg.num_workers)
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
    summary.final_loss = value
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
        log.info("checkpoint %d at step %d: epoch mean loss %.4g", epoch, step, mean_loss)
        summary.epoch_mean, summary.epoch_mean_checkpoint = mean_loss, epoch
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
    """``last.pth`` when the run stopped early or saved none."""
    summary = run.summary
    if summary.stopped_early or not storage.exists(run.writer.location("last.pth")):
        summary.epochs_done = max(summary.epochs_done, math.ceil(run.step / run.per_epoch))
        _ae_save(run, summary.epochs_done)


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

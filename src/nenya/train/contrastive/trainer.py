"""The life of a contrastive run: the untrained baseline, then train, validate, measure and save each
epoch; the entry points :func:`train_run`, :func:`train` and Nenya's :func:`main`."""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Any

import torch

from nenya.params import Params
from nenya.pipeline import storage
from nenya.train import common
from nenya.train.contrastive.epoch import EpochResult, EpochSetup, run_epoch
from nenya.train.contrastive.options import output_folder, prepare_opt
from nenya.train.contrastive.run import TrainSummary, _limits, _Run, _start
from nenya.train.contrastive.schedules import adjust_learning_rate
from nenya.train.data import epoch_loader, per_rank
from nenya.train.health import HealthOptions, collapse_message, metrics_line, snapshot_plot

#: the package's logger: the log names the messages as before the trainer became a package
log = logging.getLogger("nenya.train.contrastive")


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
    warning = collapse_message(metrics, baseline=_untrained(run.curve))
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


def _untrained(curve: common.LearningCurve) -> dict[str, float] | None:
    """The untrained model's mean cosine (the curve's epoch 0, which ``learning_curve.csv`` keeps
    for a resumed run), the baseline the collapse check judges against; None without it."""
    cos = dict(curve.metric("cos_mean")).get(0)
    return None if cos is None else {"cos_mean": cos}


def _fit_epoch(run: _Run, epoch: int) -> tuple[EpochResult, float]:
    """The training pass of ``epoch``; returns its result and learning rate."""
    opt, ranks, lim, seed = run.opt, run.ranks, run.limits, int(run.opt.seed)
    loader = epoch_loader(
        run.train_ds,
        per_rank(opt.batch_size_train, ranks),
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
    loader = epoch_loader(
        run.valid_ds,
        per_rank(opt.batch_size_valid, ranks),
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

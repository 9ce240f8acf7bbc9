"""Machinery shared by the trainers: ranks, devices and precision, checkpoints and resuming, learning curves.

Ranks, devices and precision follow the package's one policy (:mod:`nenya.ranks`,
:mod:`nenya.device`); this module adds what training alone needs on top of it.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import os
import shutil
from typing import Any

import numpy as np
import torch

from nenya._errors import NenyaError
from nenya.device import autocast, resolve_device, resolve_precision
from nenya.encoders.weights import fit_state
from nenya.params import Params
from nenya.pipeline import storage
from nenya.ranks import Ranks
from nenya.train.health import METRIC_FIELDS

log = logging.getLogger(__name__)

__all__ = [
    "CURVE_FIELDS",
    "CheckpointWriter",
    "LearningCurve",
    "all_reduce_mean",
    "autocast",
    "autocast_dtype",
    "checkpoint_state",
    "optimise",
    "plain",
    "plain_params",
    "resume_location",
    "resume_state",
    "seed_everything",
    "setup_distributed",
]

#: the columns of ``learning_curve.csv``: the loss columns, then the representation metrics of
#: :mod:`nenya.train.health` (filled on ``valid_epoch`` rows when measured, else empty)
CURVE_FIELDS = ("kind", "epoch", "step", "loss", "loss_avg", "lr", "images_per_s", *METRIC_FIELDS)
_NUMBER_FIELDS = ("loss_avg", "lr", "images_per_s", *METRIC_FIELDS)


# --------------------------------------------------------------------------- ranks and devices
def setup_distributed(device: str | torch.device | None) -> tuple[Ranks, torch.device]:
    """Start the process group under torchrun (NCCL on GPUs, gloo on CPU) and pick this rank's device.

    The ranks come from :meth:`nenya.ranks.Ranks.current` (one process without torchrun's
    environment); ``auto`` and ``cuda`` mean ``cuda:LOCAL_RANK`` on a GPU machine, else the CPU.

    Returns:
        ``(ranks, device)``.
    """
    ranks = Ranks.current()
    dev = resolve_device(ranks.device("auto" if device is None else str(device)))
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(dev)
    if ranks.distributed and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        log.info("rank %d of %d on %s", ranks.rank, ranks.world, dev)
    return ranks, dev


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a training precision (None: fp32), by :func:`nenya.device.resolve_precision`.

    ``auto`` means what it means in extraction (bf16 on GPUs and on CPUs with native bf16, else
    fp32); ``fp16`` trains on CUDA only, since the GradScaler it needs is CUDA's.
    """
    if precision == "fp16" and device.type != "cuda":
        raise NenyaError("fp16 training needs a CUDA GPU; use --precision bf16 or fp32 on the CPU")
    return resolve_precision(precision, device)


def optimise(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler=None) -> None:
    """One optimiser step on ``loss`` (through the fp16 GradScaler when there is one)."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


def all_reduce_mean(values: list[float], device: torch.device) -> list[float]:
    """Average numbers over ranks (identity in one process)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return (t / torch.distributed.get_world_size()).tolist()


# --------------------------------------------------------------------------- checkpoints
def plain(value: Any) -> Any:
    """JSON-like Python values only (numpy scalars and arrays, tuples, paths -> int/float/list/str),
    so that options pickled into a checkpoint load with ``torch.load(weights_only=True)``."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def plain_params(opt: Params | dict[str, Any]) -> Params:
    """A copy of the options as a :class:`Params` holding plain values only."""
    values = opt.dict if isinstance(opt, Params) else dict(opt)
    out = Params()
    out.__dict__.update(plain(values))
    return out


class CheckpointWriter:
    """Writes checkpoints and side files into a model folder: local (atomic renames) or a URL
    (staged locally, then uploaded whole). Only rank 0 writes."""

    def __init__(self, folder: str, *, enabled: bool = True) -> None:
        self.folder = str(folder)
        self.enabled = enabled
        self.remote = storage.is_remote(self.folder)
        if self.remote:
            key = hashlib.sha256(self.folder.encode()).hexdigest()[:16]
            self.stage = str(storage.cache_dir() / "train-stage" / key)
        else:
            self.stage = storage.local_path(self.folder)
        if enabled:
            os.makedirs(self.stage, exist_ok=True)

    def local(self, name: str) -> str:
        """The local path of ``name`` (in the staging folder when the model folder is remote)."""
        return os.path.join(self.stage, name)

    def location(self, name: str) -> str:
        """Where ``name`` ends up (a local path or URL)."""
        return storage.join(self.folder, name)

    def save(self, state: dict[str, Any], name: str) -> str:
        """``torch.save`` ``state`` as ``name``, atomically; returns its final location."""
        if not self.enabled:
            return self.location(name)
        final = self.local(name)
        with storage.atomic_local(final) as tmp:
            torch.save(state, tmp)
        return self.publish(name)

    def save_all(
        self,
        state: dict[str, Any],
        names: list[str],
        curve: LearningCurve,
        *,
        title: str,
        steps_per_epoch: int | None,
        is_main: bool,
    ) -> list[str]:
        """Save ``state`` under each of ``names`` and (rank 0) the learning curve as CSV and PNG;
        return the locations of the epoch checkpoints (every name but ``last.pth``)."""
        saved = []
        for name in names:
            loc = self.save(state, name)
            if name != "last.pth":
                saved.append(loc)
        if is_main:
            curve.write_csv(self.local("learning_curve.csv"))
            self.publish("learning_curve.csv")
            curve.plot(self.local("learning_curve.png"), title=title, steps_per_epoch=steps_per_epoch)
            self.publish("learning_curve.png")
        return saved

    def publish(self, name: str) -> str:
        """Upload ``name`` from the staging folder when the model folder is remote (a copy stays local)."""
        if self.enabled and self.remote:
            copy = self.local(name) + ".upload"
            shutil.copyfile(self.local(name), copy)
            storage.publish(copy, self.location(name))
        return self.location(name)


def checkpoint_state(
    opt: Params, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, epoch: int, **extra: Any
) -> dict[str, Any]:
    """Nenya's checkpoint dict: ``opt`` (Params), ``model`` (state dict), ``optimizer``, ``epoch`` (+ extras)."""
    state = {
        "opt": plain_params(opt),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "epoch": int(epoch),
    }
    state.update(extra)
    return state


def resume_location(
    writer: CheckpointWriter, resume: str | os.PathLike | None, auto_resume: bool
) -> str | os.PathLike | None:
    """The checkpoint a run resumes from: ``resume`` when given, else with ``auto_resume`` the model
    folder's ``last.pth`` when there is one, else None (a new run)."""
    if resume is None and auto_resume and storage.exists(writer.location("last.pth")):
        return writer.location("last.pth")
    return resume


def resume_state(
    ckpt: dict[str, Any],
    source: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: Any = None,
    *,
    what: str,
    advice: str,
    warn: logging.Logger | None = None,
) -> tuple[int, int]:
    """Load a checkpoint's model (strictly, by :func:`~nenya.encoders.weights.fit_state`), optimiser
    and fp16 scaler state into a run; returns ``(epochs done, optimiser steps done)``.

    Args:
        ckpt: the checkpoint (as :func:`~nenya.encoders.weights.load_checkpoint` reads it).
        source: where it came from, for the messages.
        what, advice: what the weights must fit and what to check when they do not (the error).
        warn: the logger that warns when the checkpoint holds no optimiser state (None: silence).
    """
    fit_state(model, ckpt["model"], source=f"cannot resume: {source}", what=what, advice=advice)
    if ckpt.get("optimizer"):
        optimizer.load_state_dict(ckpt["optimizer"])
    elif warn is not None:
        warn.warning("%s holds no optimiser state: momentum restarts from zero", source)
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    return int(ckpt.get("epoch") or 0), int(ckpt.get("step") or 0)


# --------------------------------------------------------------------------- learning curves
class LearningCurve:
    """Train/valid losses per step and per epoch, kept as rows of ``CURVE_FIELDS``.

    ``kind`` is ``train_step``, ``train_epoch``, ``valid_step`` or ``valid_epoch``; ``step`` is the
    global optimiser step for train rows and the batch index for valid rows.
    """

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(
        self,
        kind: str,
        epoch: int,
        step: int,
        loss: float,
        *,
        loss_avg: float | None = None,
        lr: float | None = None,
        images_per_s: float | None = None,
        metrics: dict[str, float] | None = None,
    ) -> None:
        """Add a row (``kind``: train_step, train_epoch, valid_step or valid_epoch); ``metrics``
        holds representation metrics by :data:`~nenya.train.health.METRIC_FIELDS` name."""
        metrics = metrics or {}
        self.rows.append(
            {
                "kind": kind,
                "epoch": int(epoch),
                "step": int(step),
                "loss": float(loss),
                "loss_avg": "" if loss_avg is None else float(loss_avg),
                "lr": "" if lr is None else float(lr),
                "images_per_s": "" if images_per_s is None else round(float(images_per_s), 2),
                **{k: float(metrics[k]) if k in metrics else "" for k in METRIC_FIELDS},
            }
        )

    def metric(self, name: str) -> list[tuple[int, float]]:
        """``(epoch, value)`` of a representation metric on every ``valid_epoch`` row that has it."""
        return [
            (r["epoch"], r[name])
            for r in self.rows
            if r["kind"] == "valid_epoch" and r.get(name, "") != "" and math.isfinite(r[name])
        ]

    def epochs(self, kind: str) -> list[tuple[int, float]]:
        """``(epoch, loss)`` of every row of ``kind``."""
        return [(r["epoch"], r["loss"]) for r in self.rows if r["kind"] == kind]

    @classmethod
    def read(cls, path: str, *, up_to_epoch: int | None = None) -> LearningCurve:
        """The curve of a ``learning_curve.csv`` (empty when absent), up to ``up_to_epoch``."""
        curve = cls()
        if not os.path.exists(path):
            return curve
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                if up_to_epoch is not None and int(r["epoch"]) > up_to_epoch:
                    continue
                curve.rows.append(
                    {
                        "kind": r["kind"],
                        "epoch": int(r["epoch"]),
                        "step": int(r["step"]),
                        "loss": float(r["loss"]),
                        **{k: (float(r[k]) if r.get(k) not in (None, "") else "") for k in _NUMBER_FIELDS},
                    }
                )
        return curve

    def write_csv(self, path: str) -> None:
        """Write the rows as CSV, atomically."""
        with storage.atomic_local(path) as tmp:
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=CURVE_FIELDS)
                w.writeheader()
                w.writerows(self.rows)

    def plot(self, path: str, *, title: str = "learning curve", steps_per_epoch: int | None = None) -> None:
        """A PNG of the train loss per step (faint), per epoch, and the valid loss per epoch; with
        representation metrics, three more panels: effective rank, alignment and uniformity,
        pairwise cosine and kNN accuracy (epoch 0: the untrained model)."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure

        panels = any(self.metric(name) for name in METRIC_FIELDS)
        fig = Figure(figsize=(11, 7.5) if panels else (7, 4.2), dpi=100)
        ax = fig.add_subplot(2, 2, 1) if panels else fig.add_subplot(1, 1, 1)
        self._plot_loss(ax, steps_per_epoch)
        ax.set_title(title)
        if panels:
            self._plot_metrics(fig)
        fig.tight_layout()
        with storage.atomic_local(path) as tmp:
            fig.savefig(tmp, format="png")

    def _plot_loss(self, ax, steps_per_epoch: int | None) -> None:
        steps = [r for r in self.rows if r["kind"] == "train_step"]
        if steps:
            spe = steps_per_epoch or max(1, math.ceil(len(steps) / max(1, max(r["epoch"] for r in steps))))
            x = [r["step"] / spe for r in steps]
            ax.plot(x, [r["loss"] for r in steps], color="tab:blue", alpha=0.3, lw=0.8, label="train (step)")
        for kind, color, label in (
            ("train_epoch", "tab:blue", "train (epoch mean)"),
            ("valid_epoch", "tab:orange", "valid (epoch mean)"),
        ):
            pts = [(e, v) for e, v in self.epochs(kind) if math.isfinite(v)]
            if pts:
                ax.plot([e for e, _ in pts], [v for _, v in pts], "o-", color=color, label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        if self.rows:
            ax.legend(loc="upper right")
        ax.grid(alpha=0.3)

    def _plot_metrics(self, fig) -> None:
        groups = (
            ("effective rank (RankMe)", (("erank_latent", "latents"), ("erank_feature", "encoder features"))),
            ("alignment / uniformity", (("alignment", "alignment (lower: views agree)"), ("uniformity", "uniformity (lower: spread)"))),
            ("cosine / kNN accuracy", (("cos_mean", "mean pairwise cosine"), ("cos_std", "its spread"), ("knn_accuracy", "kNN accuracy (k=20)"))),
        )  # fmt: skip
        for i, (label, series) in enumerate(groups):
            ax = fig.add_subplot(2, 2, i + 2)
            for name, text in series:
                pts = self.metric(name)
                if pts:
                    ax.plot([e for e, _ in pts], [v for _, v in pts], "o-", label=text, ms=4)
            ax.set_xlabel("epoch (0: untrained)")
            ax.set_title(label, fontsize=10)
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8)


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)

"""The overfit search: the smallest autoencoder that fits a handful of images (``nenya train overfit``)."""

from __future__ import annotations

import csv
import dataclasses
import itertools
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from nenya._errors import InputError
from nenya.encoders.autoencoder import crop_batch
from nenya.models.autoencoder import ConvAutoencoder, pooled_size
from nenya.pipeline import storage
from nenya.train import common
from nenya.train.autoencoder.options import AutoencoderConfig, crop_box
from nenya.train.data import open_dataset
from nenya.train.losses import logcosh

log = logging.getLogger(__name__)
_AXES = ("nlayers", "poolsize", "numfilters", "num_dense")


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
        tried = [r for r in self.rows if math.isfinite(r.final_loss)]
        if self.best is None:
            low = min(tried, key=lambda r: r.final_loss, default=None)
            lowest = "" if low is None else f" (the lowest loss, {low.final_loss:.5g}, was {_setting(low)})"
            lines.append(
                f"no setting reached the threshold {self.threshold:g}{lowest}: raise --threshold, train longer "
                "(--num-steps) or widen the grid"
            )
        else:
            b = self.best
            lines.append(f"smallest embedding reaching {self.threshold:g}: {_setting(b)} (loss {b.final_loss:.5g})")
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


def _setting(r: OverfitRow) -> str:
    return f"nlayers {r.nlayers}, poolsize {r.poolsize}, numfilters {r.numfilters}, num_dense {r.num_dense}"


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


def _announce(axes: list[list[int]], raw: torch.Tensor, num_steps: int, threshold: float) -> None:
    """Log what the search is about to do: how many settings, on what, how long each trains."""
    grid = " x ".join(f"{name} {','.join(map(str, v))}" for name, v in zip(_AXES, axes))
    log.info(
        "overfit search: %d settings (%s) on %d images of %dx%d, %d Adam steps each; "
        "a setting fits when its loss is at most %g",
        math.prod(len(v) for v in axes),
        grid,
        raw.shape[0],
        *raw.shape[-2:],
        num_steps,
        threshold,
    )


def _setting_input(row: OverfitRow, cfg: AutoencoderConfig, raw: torch.Tensor) -> torch.Tensor | None:
    """The images as ``row``'s model sees them, or None (and ``row.note`` says why) when the crop does
    not fit them or they are too small for its pooling."""
    h, w = raw.shape[-2:]
    try:
        box = crop_box(cfg, h, w)
    except InputError as e:
        row.note = str(e).split(";")[0]
        return None
    if (
        pooled_size(box[1] - box[0], row.poolsize, row.nlayers) < 1
        or pooled_size(box[3] - box[2], row.poolsize, row.nlayers) < 1
    ):
        row.note = f"image too small for {row.nlayers} layers of pool {row.poolsize}"
        return None
    return _overfit_input(raw, box, cfg.demean, cfg.standardize)


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
    axes = [sorted(set(v)) for v in (nlayers, poolsize, numfilters, num_dense)]
    grid = list(itertools.product(*axes))
    _announce(axes, raw, num_steps, threshold)
    base = AutoencoderConfig(
        data=data,
        crop=crop,
        crop_offset=(int(crop_offset[0]), int(crop_offset[1])),
        demean=demean,
        standardize=standardize,
    )
    rows: list[OverfitRow] = []
    bar = tqdm(grid, desc="overfit search", unit="setting", disable=not progress, dynamic_ncols=True)
    for k, (nl, ps, nf, nd) in enumerate(bar, 1):
        row = OverfitRow(nl, ps, nf, nd)
        rows.append(row)
        t0 = time.perf_counter()
        cfg = dataclasses.replace(base, nlayers=nl, poolsize=ps, numfilters=nf, num_dense=nd)
        x = _setting_input(row, cfg, raw)
        if x is None:
            log.info("setting %d/%d (%s): skipped, %s", k, len(grid), _setting(row), row.note)
            continue
        _overfit_one(row, x.to(dev), num_steps=num_steps, learning_rate=learning_rate, seed=seed)
        row.reaches = math.isfinite(row.final_loss) and row.final_loss <= threshold
        bar.set_postfix(loss=f"{row.final_loss:.4g}")
        outcome = f"loss {row.final_loss:.4g}, {'fits' if row.reaches else 'does not fit'}"
        log.info("setting %d/%d (%s): %s (%.1f s)", k, len(grid), _setting(row), outcome, time.perf_counter() - t0)
    bar.close()
    fits = [r for r in rows if r.reaches]
    best = min(fits, key=lambda r: (r.num_dense, r.params, r.final_loss)) if fits else None
    if best is not None:
        best.chosen = True
    result = OverfitResult(rows, threshold, best)
    if output is not None:
        result.write_csv(output)
    return result

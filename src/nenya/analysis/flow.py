"""A normalizing flow over latents, as Ulmo scores cutouts: fit on a sample, a log-likelihood (LL)
for every vector.

The flow is zuko's masked autoregressive flow over standardised vectors; the LL is of the vectors
themselves (the standardisation's Jacobian included), so LLs of collections scored with one flow are
comparable. A fitted flow is one safetensors file: its weights, and in the file's metadata its
configuration, the standardisation and the model record of the latents it was fitted on. Loading
reads tensors and JSON only: nothing is unpickled.

Fitting and scoring run in fp32 or bf16 (``precision``, :mod:`nenya.device`'s policy: ``auto`` is
bf16 where the CPU computes it natively, else fp32; the fit's default is ``auto``, scoring's fp32):
under bf16 only the transforms' networks run in bf16 (weights, gradients and the optimiser stay fp32); their outputs (shifts, scales) and the log-determinants are fp32 (rounding
those to bf16 too made the differences eight times larger). On 256-d latents bf16 LLs differ from
fp32 by a fraction of a nat on average (0.01-0.2 measured; a few nats at most, against a spread of
tens): the ranking agrees to a Spearman correlation above 0.9998, but an item near the outlier cut
can cross it (bench/outliers.py measures both on its collection).

The fit's defaults are sized for Ulmo's sample (150,000 vectors of 256 dimensions on a 2-core CPU in
minutes): batches of a 32nd of the training part (256 to 1,024 vectors), a one-cycle learning rate
peaking at 2e-3 over at most 30 passes, and bf16 where native (2.4x faster than fp32 at the same
held-out LL). The former defaults (a constant 1e-3, up to 100 passes, fp32) took 22 minutes there
(84 passes) for the same held-out LL, which 30 one-cycle passes in bf16 reach in about 3; batches of
4,096 were no faster to a given LL (bench/outliers.py, bench/RESULTS.md).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np

from nenya._errors import NenyaError

log = logging.getLogger(__name__)

__all__ = ["FlowModel", "fit_flow", "load_flow", "scoring_precision"]

FORMAT = "nenya-flow/1"
PRECISIONS = ("fp32", "bf16", "auto")
#: Most passes over the sample in a fit (it stops earlier when the held-out LL stalls).
EPOCHS = 30


@functools.cache
def _autocast_dtype(precision: str):
    """The CPU autocast dtype of a scoring precision (None: fp32), by nenya.device's policy; once per
    name, so a warning about bf16 on a CPU without native bf16 is logged once, not once per slab."""
    import torch

    from nenya.device import resolve_precision

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return resolve_precision(precision, torch.device("cpu"))


def scoring_precision(precision: str) -> str:
    """``"fp32"`` or ``"bf16"``: what scoring at ``precision`` (fp32, bf16 or auto) runs in on this CPU."""
    return "fp32" if _autocast_dtype(precision) is None else "bf16"


def _fp32_output(module, inputs, output):
    return output.float()


@contextlib.contextmanager
def _networks_in(flow, dtype):
    """Under bf16 autocast, the transforms' networks' outputs cast back to fp32 while inside."""
    hyper = [m for m in flow.modules() if isinstance(m, _zuko().nn.MaskedMLP)]
    hooks = [m.register_forward_hook(_fp32_output) for m in hyper] if dtype is not None else []
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def _zuko():
    try:
        import zuko
    except ImportError:
        raise NenyaError('the flow needs zuko: pip install "nenya[science]" (or pip install zuko)') from None
    return zuko


def _make(config: dict):
    zuko = _zuko()
    return zuko.flows.MAF(
        features=int(config["features"]),
        transforms=int(config["transforms"]),
        hidden_features=tuple(int(h) for h in config["hidden"]),
    )


@dataclass
class FlowModel:
    """A fitted flow with its standardisation; :meth:`log_prob` gives LLs of raw latent vectors."""

    flow: object
    mean: np.ndarray
    std: np.ndarray
    config: dict
    about: dict | None = None
    record: dict = field(default_factory=dict)  # how it was fitted: sample, epochs, held-out LL

    @property
    def dim(self) -> int:
        return int(self.config["features"])

    def log_prob(self, vectors: np.ndarray, *, batch: int = 16384, precision: str = "fp32") -> np.ndarray:
        """The LL of each vector (float64; rows must be finite). ``precision``: fp32, bf16 or auto
        (bf16 where the CPU computes it natively); under bf16 the transforms' networks run in bf16
        and everything after them in fp32 (see the module: LLs within a fraction of a nat of fp32)."""
        import torch

        from nenya.device import autocast

        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise NenyaError(f"this flow was fitted on {self.dim}-d vectors; these are {vectors.shape[-1]}-d")
        dtype = _autocast_dtype(precision)
        shift = float(np.log(self.std).sum())
        out = np.empty(len(vectors), np.float64)
        dist = self.flow()  # type: ignore[operator]
        # bf16 matmuls, fp32 after them: the networks' outputs (shifts, log-scales) are cast back, so the
        # transforms and the sum of log-scales over every feature do not round to bf16 (8 bits)
        with torch.no_grad(), _networks_in(self.flow, dtype), autocast(torch.device("cpu"), dtype):
            for a in range(0, len(vectors), batch):
                z = (np.asarray(vectors[a : a + batch], np.float32) - self.mean) / self.std
                out[a : a + len(z)] = dist.log_prob(torch.from_numpy(z)).double().numpy() - shift
        return out

    def save(self, path: str) -> str:
        """Write the flow as one safetensors file (weights; configuration and records as metadata)."""
        from safetensors.torch import save_file

        from nenya.analysis.latents import local_target

        tensors = {f"flow.{k}": v.detach().contiguous() for k, v in self.flow.state_dict().items()}  # type: ignore[attr-defined]
        meta = {
            "format": FORMAT,
            "config": json.dumps(self.config),
            "mean": json.dumps(self.mean.astype(float).tolist()),
            "std": json.dumps(self.std.astype(float).tolist()),
            "about": json.dumps(self.about),
            "record": json.dumps(self.record),
        }
        with local_target(path) as tmp:
            save_file(tensors, tmp, metadata=meta)
        return path


def load_flow(path: str) -> FlowModel:
    """A flow written by :meth:`FlowModel.save`; any other file (a pickle, a checkpoint) is refused."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own kinds for a file that is not one
        raise NenyaError(
            f"{path} is not a nenya flow (a safetensors file): {type(e).__name__}: {e}. nenya never unpickles a "
            "flow; fit one with `nenya outliers --method flow`"
        ) from None
    if meta.get("format") != FORMAT:
        raise NenyaError(f"{path} is a safetensors file but not a nenya flow (format {meta.get('format')!r})")
    config = json.loads(meta["config"])
    flow = _make(config)
    flow.load_state_dict({k.removeprefix("flow."): v for k, v in tensors.items()})
    flow.eval()
    return FlowModel(
        flow,
        np.asarray(json.loads(meta["mean"]), np.float32),
        np.asarray(json.loads(meta["std"]), np.float32),
        config,
        json.loads(meta.get("about", "null")),
        json.loads(meta.get("record", "{}")),
    )


def _one_pass(flow, opt, schedule, train, batch: int, dtype) -> None:
    """One epoch of maximum likelihood over ``train`` in random batches (bf16 autocast when ``dtype``)."""
    import torch

    from nenya.device import autocast

    flow.train()
    with _networks_in(flow, dtype):
        for idx in torch.randperm(len(train)).split(batch):
            with autocast(torch.device("cpu"), dtype):
                loss = -flow().log_prob(train[idx]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()


def fit_flow(
    sample: np.ndarray,
    *,
    transforms: int = 5,
    hidden: tuple[int, ...] | None = None,
    epochs: int = EPOCHS,
    batch: int | None = None,
    lr: float = 2e-3,
    patience: int = 5,
    heldout: float = 0.1,
    seed: int = 0,
    precision: str = "auto",
    about: dict | None = None,
    progress: bool = True,
) -> FlowModel:
    """Fit a flow by maximum likelihood on ``sample`` (finite rows), stopping when the held-out part's
    LL has not improved for ``patience`` epochs; the best epoch's weights are kept. ``hidden``: the
    layers of each transform's network (default: two of twice the dimension, at least 64); ``batch``:
    vectors a step (default: a 32nd of the training part, between 256 and 1,024); ``lr``: the peak of
    a one-cycle schedule over ``epochs``; ``precision``: fp32, bf16 or auto (see the module)."""
    import torch
    from tqdm.auto import tqdm

    sample = np.asarray(sample, np.float32)
    if len(sample) < 50:
        raise NenyaError(f"a flow needs at least 50 vectors to fit; got {len(sample)}")
    started = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(sample))
    n_held = max(10, int(round(heldout * len(sample))))
    mean = sample.mean(0)
    std = np.maximum(sample.std(0), 1e-6 * max(float(sample.std()), 1e-12)).astype(np.float32)
    z = torch.from_numpy((sample - mean) / std)
    held, train = z[order[:n_held]], z[order[n_held:]]
    d = int(sample.shape[1])
    hidden = hidden or (max(64, 2 * d),) * 2
    batch = batch or min(1024, max(256, len(train) // 32))
    dtype = _autocast_dtype(precision)
    config = {"kind": "maf", "features": d, "transforms": transforms, "hidden": list(hidden)}
    flow = _make(config)
    opt = torch.optim.Adam(flow.parameters(), lr=lr)
    steps = epochs * math.ceil(len(train) / batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    best, best_state, stale, shift = -math.inf, None, 0, float(np.log(std).sum())
    bar = tqdm(range(epochs), desc="fitting the flow", unit="epoch", disable=not progress)
    epoch = 0
    for epoch in bar:  # noqa: B007 (the last epoch run is recorded)
        _one_pass(flow, opt, schedule, train, batch, dtype)
        flow.eval()
        with torch.no_grad():
            ll = float(flow().log_prob(held).mean()) - shift
        bar.set_postfix(heldout_ll=f"{ll:.3f}")
        if ll > best + 1e-4:
            best, stale = ll, 0
            best_state = {k: v.detach().clone() for k, v in flow.state_dict().items()}
        else:
            stale += 1
            if stale >= patience:
                break
    bar.close()
    assert best_state is not None
    flow.load_state_dict(best_state)
    flow.eval()
    record = {
        "sample": len(sample), "heldout": n_held, "epochs": epoch + 1, "heldout_ll": best, "seed": seed,
        "precision": "fp32" if dtype is None else "bf16", "batch": batch, "lr": lr,
        "seconds": round(time.perf_counter() - started, 3),
    }  # fmt: skip
    log.info("flow: %d epochs, held-out mean LL %.4f", epoch + 1, best)
    return FlowModel(flow, mean.astype(np.float32), std, config, about, record)

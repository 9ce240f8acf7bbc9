"""The encoder contract: a model, its preprocessing, its device and precision."""

from __future__ import annotations

import logging
from typing import Any, TypeVar

import torch
from torch import nn

from nenya._errors import InputError, NenyaError
from nenya.device import PRECISIONS, autocast, compile_model, free_cache, is_oom, resolve_device, resolve_precision
from nenya.encoders.options import EncoderOptions
from nenya.preprocess import ImageTransform, Preprocess, normalise

log = logging.getLogger(__name__)

_E = TypeVar("_E", bound="Encoder")

# ImageTransform, Preprocess (nenya.preprocess) and the precision policy (nenya.device) keep their old names here
__all__ = [
    "PRECISIONS",
    "Encoder",
    "EncoderOptions",
    "ImageTransform",
    "Preprocess",
    "options_from_about",
    "resolve_device",
    "resolve_precision",
]


class Encoder:
    """A model plus its preprocessing. ``encode(batch)`` -> (B, dim) float32 on the device.

    Subclasses set ``model``, ``dim``, ``name``, ``preprocess`` and ``fingerprint``. A tile
    encoder sets ``grid = (rows, cols)``; its ``encode`` returns (B, rows * cols, dim), tiles in
    row-major order (tile t sits at x = t % cols, y = t // cols of the feature map).
    """

    grid: tuple[int, int] | None = None

    def __init__(self, model: nn.Module, *, name: str, dim: int, preprocess: Preprocess, fingerprint: str) -> None:
        self.model = model.eval()
        self.name = name
        self.dim = dim
        self.preprocess = preprocess
        self.fingerprint = fingerprint
        self.device = torch.device("cpu")
        self.autocast_dtype: torch.dtype | None = None
        self.precision = "fp32"
        self.channels_last = False
        self.compiled = False
        self.max_batch: int | None = None  # learnt from out-of-memory errors: the working sub-batch size
        self._compiled_model: nn.Module | None = None
        # how it was made (set by load_encoder; recorded in outputs so queries can rebuild it)
        self.spec: str | None = None
        self.options: EncoderOptions = EncoderOptions()
        self.opts_file: str | None = None

    def about(self) -> dict:
        """What made the vectors, as plain JSON: written into every output (``nenya`` key of the
        Parquet schema metadata, ``nenya`` attribute of an HDF5 file); see :func:`options_from_about`."""
        import dataclasses

        import nenya
        from nenya.pipeline.storage import redact

        def clean(v):  # outputs are shared: no URL password or secret token goes into them
            return redact(v) if isinstance(v, str) else list(v) if isinstance(v, tuple) else v

        options = {
            k: clean(v) for k, v in dataclasses.asdict(self.options).items() if v != getattr(EncoderOptions(), k)
        }
        return {
            "model": clean(self.spec or self.name),
            "options": options,
            "opts": clean(self.opts_file),
            "dim": self.dim,
            "grid": list(self.grid) if self.grid else None,
            "precision": self.precision,
            "preprocess": repr(self.preprocess),
            "nenya_version": nenya.__version__,
        }

    def to(
        self: _E,
        device: str | torch.device | None = "auto",
        precision: str = "fp32",
        *,
        channels_last: bool = True,
        compile: bool = False,
    ) -> _E:
        """Move to ``device`` with ``precision``.

        Args:
            device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``.
            precision: ``fp32``, ``bf16``, ``fp16`` or ``auto`` (see :func:`resolve_precision`).
            channels_last: NHWC memory layout; ~20% faster for conv nets on CPU and GPU, changes
                fp32 outputs by ~1e-7 only.
            compile: ``torch.compile`` the model (default mode). The first batch then takes
                seconds to minutes to compile; it pays off on long GPU runs. If compiling fails
                (here or at the first batch) a warning is logged and the model runs eagerly.

        Example:
            >>> enc = load_encoder("timm:resnet50").to("cuda", "bf16", compile=True)
        """
        self.device = resolve_device(device)
        self.channels_last = channels_last
        self.precision = precision
        self.autocast_dtype = resolve_precision(precision, self.device)
        self.model.to(self.device)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs omit it
        self._compiled_model = compile_model(self.model, self.name) if compile else None
        self.compiled = self._compiled_model is not None
        return self

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """The device side of the preprocessing stage (:func:`nenya.preprocess.normalise`)."""
        return normalise(x, self.preprocess, name=self.name)

    def _autocast(self):
        return autocast(self.device, self.autocast_dtype)

    @torch.inference_mode()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Encode a raw batch (any device; moved as it is, uint8 included, with a non-blocking copy,
        then normalised on the device).

        When the forward runs out of memory the batch is split in halves (recursively), the
        pieces are encoded and concatenated in order, and the size that fitted is remembered
        (``max_batch``) for later calls. Raises NenyaError when one item alone does not fit.
        """
        x = x.to(self.device, non_blocking=True)
        if x.dim() not in (3, 4):
            raise InputError(f"expected a batch (B, C, H, W), got shape {tuple(x.shape)}")
        before = self.max_batch
        out = self._fit(x) if len(x) else self._forward(x)
        if self.max_batch != before:
            log.warning(
                "%s ran out of %s memory on a batch of %d: encoding in sub-batches of %d from now on "
                "(a smaller --batch-size avoids the retries)",
                self.name,
                self.device,
                len(x),
                self.max_batch,
            )
        return out

    def _fit(self, x: torch.Tensor) -> torch.Tensor:
        """``_forward(x)`` in sub-batches of at most ``max_batch``, halving on out-of-memory errors."""
        if self.max_batch is not None and len(x) > self.max_batch:
            step = max(1, self.max_batch)
            return torch.cat([self._fit(x[a : a + step]) for a in range(0, len(x), step)])
        try:
            return self._forward(x)
        except Exception as e:
            if not is_oom(e):
                raise
            if len(x) <= 1:
                raise NenyaError(
                    f"one item of shape {tuple(x.shape[1:])} does not fit in {self.device} memory with {self.name} "
                    f"at {self.precision}: free memory held by other processes, use a smaller input size, "
                    f"--precision bf16/fp16 on a GPU, or --device cpu"
                ) from e
        # out of the except block: the error's traceback no longer pins the failed batch's activations
        free_cache(self.device)
        half = (len(x) + 1) // 2
        self.max_batch = half if self.max_batch is None else min(self.max_batch, half)
        return torch.cat([self._fit(x[:half]), self._fit(x[half:])])

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """Prepare and encode one (sub-)batch already on the device."""
        x = self.prepare(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self._compiled_model is not None:
            try:
                with self._autocast():
                    return self._compiled_model(x).float()
            except Exception as e:
                if is_oom(e):
                    raise
                log.warning(
                    "the compiled %s failed (%s: %s); running it eagerly from now on",
                    self.name,
                    type(e).__name__,
                    (str(e).strip().splitlines() or [""])[0][:300],
                )
                self._compiled_model = None
                self.compiled = False
        with self._autocast():
            out = self.model(x)
        return out.float()


def options_from_about(about: dict) -> EncoderOptions:
    """The :class:`EncoderOptions` recorded by :meth:`Encoder.about` (lists back to tuples)."""
    import dataclasses

    known = {f.name for f in dataclasses.fields(EncoderOptions)}
    values: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in (about.get("options") or {}).items() if k in known
    }
    return EncoderOptions(**values)

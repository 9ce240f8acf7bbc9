"""The encoder contract: a model, its preprocessing, its device and precision."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch
from torch import nn

from nenya._errors import InputError, NenyaError
from nenya.encoders._speed import compile_model, cpu_has_native_bf16, free_cache, is_oom

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16", "auto")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is a clear error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise NenyaError("device 'cuda' was asked for but torch sees no GPU; use --device cpu (or auto)")
    return dev


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a precision name (None means plain fp32).

    ``auto``: bf16 (or fp16 without bf16) on CUDA; on a CPU, bf16 only where the CPU computes it
    natively (AVX512-BF16, AMX, Arm BF16), else fp32. Asking for ``bf16`` on a CPU without native
    support logs a warning: PyTorch then emulates it, several times slower than fp32.
    """
    if precision not in PRECISIONS:
        raise NenyaError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu" and cpu_has_native_bf16():
            return torch.bfloat16
        return None  # fp32: bf16 is only fast on CPUs with native support
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        log.warning("bf16 was asked for on a CPU without native bf16 (no AVX512-BF16/AMX): it will likely be "
                    "slower than fp32 here (about 4-5x on AVX2 CPUs), with latents that differ slightly; "
                    "use --precision fp32 (or auto) on this machine")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


@dataclass(frozen=True)
class ImageTransform:
    """How a decoded photo becomes a fixed-size uint8 (3, H, W) array, on the CPU (in the readers).

    Attributes:
        size: final (height, width) of the model input.
        resize: shorter side to resize to before cropping (an int), an exact (height, width), or
            None for no resize (the image must then already have ``size``).
        crop: center-crop to ``size`` after resizing (False: resize straight to ``size``).
        interpolation: ``bilinear``, ``bicubic``, ``nearest`` or ``lanczos``.
    """

    size: tuple[int, int] = (224, 224)
    resize: int | tuple[int, int] | None = 256
    crop: bool = True
    interpolation: str = "bilinear"


@dataclass(frozen=True)
class Preprocess:
    """What the encoder does to a raw batch on the device, before the model.

    uint8 batches (photos) are scaled to [0, 1] first; then ``demean`` subtracts each image's
    mean (Nenya cutouts); ``mean``/``std`` normalise per channel (ImageNet-style models); a
    one-channel batch is repeated to ``in_channels``. ``image`` is the CPU-side resize/crop that
    image sources apply before batching (None for sources of fixed-size arrays).
    """

    in_channels: int = 3
    demean: bool = True
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    image: ImageTransform | None = None


@dataclass(frozen=True)
class EncoderOptions:
    """Options of the ``timm:``/``torchvision:``/``torchscript:``/``ae:`` encoders (None: the model's default).

    Attributes:
        weights: a local or remote safetensors file or state dict (loaded safely).
        pretrained: load the model hub's pretrained weights (needs a network connection).
        layer: feature level of an inner layer (timm ``features_only`` index) instead of the pooled vector.
        pool: ``avg``, ``max``, ``gem`` or ``none`` (one vector per spatial tile).
        size: input size (one int: square) overriding the model's data config.
        resize: shorter side to resize to before the center crop (overrides the data config).
        crop: center-crop (True) or resize straight to ``size`` (False).
        mean: per-channel mean; std: per-channel std; interpolation: resize filter.
    """

    weights: str | None = None
    pretrained: bool = False
    layer: int | None = None
    pool: str | None = None
    size: int | None = None
    resize: int | None = None
    crop: bool | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str | None = None


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

        options = {k: clean(v) for k, v in dataclasses.asdict(self.options).items() if v != getattr(EncoderOptions(), k)}
        return {"model": clean(self.spec or self.name), "options": options, "opts": clean(self.opts_file),
                "dim": self.dim, "grid": list(self.grid) if self.grid else None, "precision": self.precision,
                "preprocess": repr(self.preprocess), "nenya_version": nenya.__version__}

    def to(self, device: str | torch.device | None = "auto", precision: str = "fp32", *,
           channels_last: bool = True, compile: bool = False) -> Encoder:
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
            self.model.to(memory_format=torch.channels_last)
        self._compiled_model = compile_model(self.model, self.name) if compile else None
        self.compiled = self._compiled_model is not None
        return self

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Demean each image and repeat one channel to the model's ``in_channels``."""
        if x.dim() == 3:
            x = x[:, None]
        if x.dim() != 4:
            raise InputError(f"expected a batch (B, C, H, W), got shape {tuple(x.shape)}")
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        pre = self.preprocess
        if pre.demean:
            x = x - x.mean(dim=(1, 2, 3), keepdim=True)
        if pre.mean is not None or pre.std is not None:
            c = x.shape[1]
            if c == 1 and pre.in_channels != 1:
                x = x.expand(-1, pre.in_channels, -1, -1)
            mean = torch.tensor(pre.mean if pre.mean is not None else (0.0,), device=x.device).view(1, -1, 1, 1)
            std = torch.tensor(pre.std if pre.std is not None else (1.0,), device=x.device).view(1, -1, 1, 1)
            x = (x - mean) / std
        c, want = x.shape[1], self.preprocess.in_channels
        if c != want:
            if c != 1:
                raise InputError(f"{self.name} takes {want} channel(s); got images with {c}")
            x = x.expand(-1, want, -1, -1)
        return x

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

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
            log.warning("%s ran out of %s memory on a batch of %d: encoding in sub-batches of %d from now on "
                        "(a smaller --batch-size avoids the retries)", self.name, self.device, len(x), self.max_batch)
        return out

    def _fit(self, x: torch.Tensor) -> torch.Tensor:
        """``_forward(x)`` in sub-batches of at most ``max_batch``, halving on out-of-memory errors."""
        if self.max_batch is not None and len(x) > self.max_batch:
            step = max(1, self.max_batch)
            return torch.cat([self._fit(x[a:a + step]) for a in range(0, len(x), step)])
        try:
            return self._forward(x)
        except Exception as e:
            if not is_oom(e):
                raise
            if len(x) <= 1:
                raise NenyaError(
                    f"one item of shape {tuple(x.shape[1:])} does not fit in {self.device} memory with {self.name} "
                    f"at {self.precision}: free memory held by other processes, use a smaller input size, "
                    f"--precision bf16/fp16 on a GPU, or --device cpu") from e
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
                log.warning("the compiled %s failed (%s: %s); running it eagerly from now on", self.name,
                            type(e).__name__, (str(e).strip().splitlines() or [""])[0][:300])
                self._compiled_model = None
                self.compiled = False
        with self._autocast():
            out = self.model(x)
        return out.float()


def options_from_about(about: dict) -> EncoderOptions:
    """The :class:`EncoderOptions` recorded by :meth:`Encoder.about` (lists back to tuples)."""
    import dataclasses

    known = {f.name for f in dataclasses.fields(EncoderOptions)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in (about.get("options") or {}).items() if k in known}
    return EncoderOptions(**values)

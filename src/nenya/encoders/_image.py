"""Machinery shared by the photo encoders (timm, torchvision, TorchScript): preprocessing from a
model's data config plus user overrides, pooling of feature maps, safe weight loading, fingerprints."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from nenya._errors import CheckpointError, NenyaError
from nenya.encoders.base import EncoderOptions
from nenya.encoders.weights import file_digest, fit_state, load_checkpoint, strip_module
from nenya.pipeline import storage
from nenya.preprocess import ImageTransform, Preprocess, check_transform

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
POOLS = ("avg", "max", "gem", "none")
GEM_P = 3.0


@dataclass(frozen=True)
class Defaults:
    """A model's own preprocessing (its data config), before the user's overrides.

    Attributes:
        size: (height, width) of the model input.
        resize: shorter side (int) or exact (height, width) to resize to before the center crop.
        crop: center-crop after resizing (False: resize straight to ``size``).
        interpolation: resize filter name.
        mean, std: per-channel normalisation of [0, 1] pixels (None: none).
        crop_pct: ``size / resize``, used to derive ``resize`` when the user changes ``size``
            (timm's rule: ``floor(size / crop_pct)``); None derives it from ``size`` and ``resize``.
        in_channels: channels the model takes.
    """

    size: tuple[int, int] = (224, 224)
    resize: int | tuple[int, int] | None = 256
    crop: bool = True
    interpolation: str = "bilinear"
    mean: tuple[float, ...] | None = IMAGENET_MEAN
    std: tuple[float, ...] | None = IMAGENET_STD
    crop_pct: float | None = None
    in_channels: int = 3


def timm_defaults(cfg: Mapping) -> Defaults:
    """:class:`Defaults` from ``timm.data.resolve_data_config`` output, as timm's eval transform reads it.

    ``crop_mode`` ``center`` (the default): resize the shorter side to ``floor(size / crop_pct)``
    (an exact (H, W) when the input is not square), then center-crop; ``squash``: resize to
    exactly ``floor(size / crop_pct)`` on both sides, then center-crop; ``border`` is read as
    ``center`` (nenya has no border-fill transform).
    """
    c, h, w = (int(v) for v in cfg.get("input_size", (3, 224, 224)))
    crop_pct = float(cfg.get("crop_pct") or 0.875)
    mode = cfg.get("crop_mode") or "center"
    if mode not in ("center", "squash"):
        log.info("timm crop_mode %r is read as 'center'", mode)
    resize = _timm_resize((h, w), crop_pct, squash=mode == "squash")
    return Defaults(
        size=(h, w),
        resize=resize,
        crop=True,
        interpolation=str(cfg.get("interpolation") or "bicubic"),
        mean=tuple(float(m) for m in cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(float(s) for s in cfg.get("std", IMAGENET_STD)),
        crop_pct=crop_pct,
        in_channels=c,
    )


def _timm_resize(size: tuple[int, int], crop_pct: float, *, squash: bool = False) -> int | tuple[int, int]:
    scale = (math.floor(size[0] / crop_pct), math.floor(size[1] / crop_pct))
    if scale[0] == scale[1] and not squash:
        return scale[0]
    return scale


def image_preprocess(defaults: Defaults, options: EncoderOptions, *, demean: bool = False) -> Preprocess:
    """The encoder's :class:`Preprocess`: the model's defaults with the user's overrides applied.

    ``options.size`` (square) replaces the input size, and unless ``options.resize`` is given too
    the resize keeps the model's ratio (``floor(size / crop_pct)``, as timm does); ``options.crop``
    False resizes straight to the size; ``mean``/``std``/``interpolation`` replace the defaults.

    Raises:
        ValueError: an unknown interpolation, a non-positive size, or mean/std of the wrong length.
    """
    size = defaults.size
    resize = defaults.resize
    if options.size is not None:
        size = (int(options.size), int(options.size))
        if size != defaults.size:
            pct = defaults.crop_pct
            if pct is None:
                old = defaults.resize if isinstance(defaults.resize, int) else (defaults.resize or defaults.size)[0]
                pct = defaults.size[0] / old if old else 1.0
            if defaults.resize is None:
                resize = None if defaults.crop else size
            else:
                resize = _timm_resize(size, pct, squash=isinstance(defaults.resize, tuple))
    if options.resize is not None:
        resize = int(options.resize)
    crop = defaults.crop if options.crop is None else bool(options.crop)
    interpolation = options.interpolation or defaults.interpolation
    transform = check_transform(
        ImageTransform(size=size, resize=resize if crop else size, crop=crop, interpolation=interpolation)
    )
    mean = _channels("mean", options.mean if options.mean is not None else defaults.mean, defaults.in_channels)
    std = _channels("std", options.std if options.std is not None else defaults.std, defaults.in_channels)
    if std is not None and any(s == 0 for s in std):
        raise ValueError(f"std must not contain zeros, got {std}")
    return Preprocess(in_channels=defaults.in_channels, demean=demean, mean=mean, std=std, image=transform)


def _channels(what: str, values: Sequence[float] | None, channels: int) -> tuple[float, ...] | None:
    if values is None:
        return None
    values = tuple(float(v) for v in values)
    if len(values) not in (1, channels):
        raise ValueError(
            f"{what} has {len(values)} values; the model takes {channels} channel(s): give 1 or {channels}"
        )
    return values


def check_pool(pool: str | None) -> str | None:
    """Validate a ``--pool`` value (None: the model's default)."""
    if pool is not None and pool not in POOLS:
        raise NenyaError(f"unknown pool {pool!r}; expected one of {', '.join(POOLS)}")
    return pool


def pool_features(x: torch.Tensor, pool: str) -> torch.Tensor:
    """Pool a feature map (B, C, H, W): ``avg``/``max``/``gem`` -> (B, C); ``none`` -> tiles (B, H*W, C).

    Tiles are row-major: tile ``t`` is the feature-map cell at x = t % W, y = t // W. GeM is
    generalised-mean pooling with p = 3 over activations clamped at 1e-6 (Radenović et al.).
    """
    if x.dim() != 4:
        raise NenyaError(f"expected a feature map (B, C, H, W) to pool, got shape {tuple(x.shape)}")
    if pool == "avg":
        return x.mean(dim=(2, 3))
    if pool == "max":
        return x.amax(dim=(2, 3))
    if pool == "gem":
        return x.float().clamp(min=1e-6).pow(GEM_P).mean(dim=(2, 3)).pow(1.0 / GEM_P).to(x.dtype)
    if pool == "none":
        return x.flatten(2).transpose(1, 2)
    raise NenyaError(f"unknown pool {pool!r}; expected one of {', '.join(POOLS)}")


class PooledMap(nn.Module):
    """Wrap a module producing a feature map (or a list of them: the first is used) with pooling.

    ``nhwc`` marks maps laid out (B, H, W, C) (timm's swin-style models), permuted first.
    """

    def __init__(self, inner: nn.Module, pool: str, *, method: str | None = None, nhwc: bool = False) -> None:
        super().__init__()
        self.inner = inner
        self.pool = pool
        self.method = method
        self.nhwc = nhwc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = getattr(self.inner, self.method)(x) if self.method else self.inner(x)
        if isinstance(f, (list, tuple)):
            f = f[0]
        if isinstance(f, dict):
            f = next(iter(f.values()))
        if self.nhwc and f.dim() == 4:
            f = f.permute(0, 3, 1, 2)
        return pool_features(f, self.pool)


@contextlib.contextmanager
def seeded(seed: int = 0) -> Iterator[None]:
    """Run with torch's CPU RNG seeded, restoring the caller's RNG state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@torch.inference_mode()
def probe(model: nn.Module, pre: Preprocess, *, channels: int | None = None) -> torch.Tensor:
    """One forward pass of a zero image at the input size (for the output dim and the tile grid)."""
    h, w = pre.image.size if pre.image is not None else (224, 224)
    x = torch.zeros(1, channels or pre.in_channels, h, w)
    out = model.eval()(x)
    if isinstance(out, (list, tuple)):
        out = out[0]
    return out


def load_weights(
    model: nn.Module, path: str, *, trust: bool, remove_module: bool, ignore_prefixes: Sequence[str] = (), what: str
) -> str:
    """Load ``path`` (safetensors, or a state dict loaded with ``weights_only=True``) into ``model``.

    Returns:
        ``weights:<sha256>`` of the file, for the encoder's fingerprint.
    """
    state = read_state(path, trust=trust, remove_module=remove_module)
    fit_state(
        model,
        state,
        remove_module=False,
        ignore_prefixes=ignore_prefixes,
        what=what,
        source=str(path),
        advice="Check that the weights were saved from this architecture (a plain state dict of the model, "
        "or safetensors)",
    )
    return weights_tag(path)


def read_state(path: str, *, trust: bool, remove_module: bool) -> dict[str, torch.Tensor]:
    """The state dict in a weights file, loaded safely (see :func:`nenya.encoders.weights.load_checkpoint`)."""
    state = load_checkpoint(path, trust=trust)["model"]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path} holds no state dict of tensors")
    return strip_module(dict(state)) if remove_module else dict(state)


def weights_tag(path: str) -> str:
    return f"weights:{file_digest(storage.fetch(str(path)))}"


def encoder_fingerprint(
    kind: str, name: str, layer: int | None, pool: str | None, pre: Preprocess, weights: str
) -> str:
    """sha256 of what determines the vectors: model kind and name, layer, pool, preprocessing and
    the weights (``weights:<file sha256>``, ``pretrained:<tag>`` or ``random-seed-0``)."""
    text = repr((kind, name, layer, pool, pre, weights))
    return hashlib.sha256(text.encode()).hexdigest()[:16]

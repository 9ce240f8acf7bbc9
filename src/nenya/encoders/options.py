"""Options of the photo-model encoders, as plain data (no torch: the CLI builds them before loading it)."""

from __future__ import annotations

from dataclasses import dataclass


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

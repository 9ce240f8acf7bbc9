"""What preprocessing is, as data: the CPU-side image transform and the device-side normalisation.

An encoder owns one :class:`Preprocess` (as timm's models carry their data config); readers apply
its ``image`` part on the CPU (:mod:`nenya.preprocess.cpu`), the encoder's device the rest
(:func:`nenya.preprocess.normalise`, and :mod:`nenya.preprocess.device` for ``--decode gpu``).
The reprs of these classes are part of every run's fingerprint: keep their names and fields.
"""

from __future__ import annotations

from dataclasses import dataclass


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

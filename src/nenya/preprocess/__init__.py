"""Preprocessing, one stage owned by the encoder: raw items in, model input out.

- :mod:`~nenya.preprocess.config`: what it is, as data (:class:`ImageTransform`, :class:`Preprocess`);
  every encoder carries one ``Preprocess``, as timm's models carry their data config.
- :mod:`~nenya.preprocess.cpu`: what readers do on the CPU (decode a photo, EXIF orientation, to
  RGB, resize and crop, with skip reasons), the same for extraction, training and queries.
- :mod:`~nenya.preprocess.device`: ``--decode gpu``: JPEGs decoded, oriented, resized and cropped
  on the encoder's CUDA device (nvjpeg), with per-item CPU fallbacks.
- :func:`normalise`: what the encoder's device does before the model (scale, demean, mean/std,
  repeat channels).

The runner calls :func:`decode_on_device` and the encoder :func:`normalise`; sources call the CPU
functions with the transform they were given. Nothing here imports an encoder or a source.
"""

from __future__ import annotations

from nenya.preprocess.config import ImageTransform, Preprocess
from nenya.preprocess.cpu import (
    DEFAULT_MAX_PIXELS,
    INTERPOLATIONS,
    SkipItem,
    check_transform,
    decode_image,
    exif_orientation,
    read_bytes,
    resized_shape,
)
from nenya.preprocess.normalise import normalise


def decode_on_device(batch, *, transform: ImageTransform, device) -> None:
    """See :func:`nenya.preprocess.device.decode_on_device` (imported on first use: it needs torch ops)."""
    from nenya.preprocess.device import decode_on_device as run

    run(batch, transform=transform, device=device)


def device_decode_unavailable(device, transform: ImageTransform | None) -> str | None:
    """Why JPEGs cannot be decoded on ``device`` with ``transform`` (None when they can)."""
    from nenya.preprocess.device import unavailable

    return unavailable(device, transform)


def device_candidate(data: bytes, *, max_pixels: int) -> int | None:
    """The EXIF orientation of a JPEG the device can decode (None: decode it on the CPU)."""
    from nenya.preprocess.device import device_candidate as check

    return check(data, max_pixels=max_pixels)


__all__ = [
    "DEFAULT_MAX_PIXELS",
    "INTERPOLATIONS",
    "ImageTransform",
    "Preprocess",
    "SkipItem",
    "check_transform",
    "decode_image",
    "decode_on_device",
    "device_candidate",
    "device_decode_unavailable",
    "exif_orientation",
    "normalise",
    "read_bytes",
    "resized_shape",
]

"""Decode one image file into a fixed-size uint8 (3, H, W) array, or say why it cannot be used.

Every photo goes through :func:`decode_image`, so there is exactly one answer to "what does
nenya feed the model for this file". The rules, in order:

1. **Refusals** raise :class:`SkipItem` with a short reason (the item keeps its slot in the
   output with status ``skipped:<reason>``): ``empty file``, ``missing file``, ``not an image``,
   ``truncated``, ``pixel limit: WxH > N`` (checked from the header, before any pixel is
   decoded), ``unsupported mode <mode>``, ``decode error: <detail>``.
2. **EXIF orientation** is applied (:func:`PIL.ImageOps.exif_transpose`): a photo taken with
   the camera on its side is encoded upright, exactly as if it had been saved rotated.
3. **To RGB**, one way for every mode:

   - ``1``, ``L``: grey repeated to three channels;
   - ``LA``, ``RGBA``, ``PA``, ``La``, ``RGBa``, and ``P`` with a transparency entry: **composited
     on white** (a transparent pixel's stored colour is arbitrary, often black; white is what
     viewers show). This differs from ``Image.convert("RGB")`` (timm's and torchvision's folder
     loaders), which drops alpha, only for pixels that are not fully opaque;
   - ``P`` without transparency: its palette colours;
   - ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``: Pillow's conversion;
   - 16-bit grey (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``) and 32-bit integer ``I``: clipped to
     [0, 65535] and shifted right by 8 bits (a fixed scale, so the same pixel value always maps
     to the same grey, whatever else is in the image), then repeated;
   - float ``F``: clipped to [0, 255], rounded, then repeated (values are taken as 8-bit greys).

4. **Resize and crop** as torchvision's/timm's eval transforms do on PIL images
   (:class:`~nenya.preprocess.ImageTransform`): with ``crop``, resize the shorter side to
   ``resize`` (the longer one to ``int(resize * long / short)``) or to an exact (H, W), then
   center-crop to ``size`` at offsets ``int(round((h - th) / 2))`` (zero-padded when the image is
   smaller); without ``crop``, resize straight to ``size``. Resizing uses Pillow's filters
   (antialiased), the same call torchvision makes for PIL inputs.

Multi-frame files (animated GIF/WebP, multi-page TIFF) give their first frame. Pillow's global
switches (``ImageFile.LOAD_TRUNCATED_IMAGES``, ``Image.MAX_IMAGE_PIXELS``) are left alone: images
over twice Pillow's limit are refused by Pillow itself (same ``pixel limit`` reason), and ones
between its limit and ``max_pixels`` (only when you raise ``max_pixels``) make Pillow warn once.
"""

from __future__ import annotations

import io
import logging
import os
import re

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from nenya.pipeline import storage
from nenya.preprocess.config import ImageTransform

log = logging.getLogger(__name__)

#: Pillow's own default decompression-bomb threshold (about 89.5 megapixels).
DEFAULT_MAX_PIXELS = 89_478_485

INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}

_ALPHA_MODES = {"LA", "RGBA", "PA", "La", "RGBa"}
_INT16_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
_PILLOW_RGB_MODES = {"CMYK", "YCbCr", "LAB", "HSV", "RGBX"}


class SkipItem(Exception):
    """An item that cannot be used; ``reason`` is short and stable (it goes into the status column)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def check_transform(transform: ImageTransform) -> ImageTransform:
    """Validate an :class:`ImageTransform` once, up front (not per image).

    Raises:
        ValueError: an unknown interpolation or a non-positive size, naming the valid values.
    """
    if transform.interpolation not in INTERPOLATIONS:
        raise ValueError(
            f"unknown interpolation {transform.interpolation!r}; expected one of {', '.join(INTERPOLATIONS)}"
        )
    h, w = transform.size
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got {transform.size}")
    r = transform.resize
    if r is not None and (min(r) if isinstance(r, tuple) else r) <= 0:
        raise ValueError(f"resize must be positive, got {r}")
    return transform


def read_bytes(path: str | os.PathLike, *, fs=None, fs_path: str | None = None) -> bytes:
    """The bytes of a local file or URL.

    Args:
        path: local path or URL (used for messages, and opened when ``fs`` is not given).
        fs: an fsspec filesystem to read ``fs_path`` with (saves resolving the URL per file).
        fs_path: the path within ``fs``.

    Raises:
        SkipItem: ``missing file``, ``not a file`` or ``unreadable: <detail>``.
    """
    try:
        if fs is None:
            if not storage.is_remote(path):
                with open(storage.local_path(path), "rb") as f:
                    return f.read()
            fs, fs_path = storage.url_to_fs(path)
        return storage.retry(lambda: fs.cat_file(fs_path), what=f"read of {path}")
    except FileNotFoundError:
        raise SkipItem("missing file") from None
    except IsADirectoryError:
        raise SkipItem("not a file") from None
    except PermissionError:
        raise SkipItem("unreadable: permission denied") from None
    except OSError as e:
        raise SkipItem(f"unreadable: {type(e).__name__}") from None


def decode_image(data: bytes, *, transform: ImageTransform, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode image bytes to a uint8 (3, H, W) array of ``transform.size`` (rules in the module docstring).

    Example:
        >>> arr = decode_image(open("cat.jpg", "rb").read(), transform=ImageTransform(size=(224, 224)))
        >>> arr.shape, arr.dtype
        ((3, 224, 224), dtype('uint8'))

    Raises:
        SkipItem: the bytes are not a usable image (the reason says why).
    """
    if not data:
        raise SkipItem("empty file")
    # Both truncated-file leniency and Pillow's global bomb limit are process-wide switches;
    # we leave them alone and enforce our own limit from the header instead.
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # pragma: no cover - someone else's global setting
        log.debug("ImageFile.LOAD_TRUNCATED_IMAGES is set elsewhere; truncated files may decode partially")
    try:
        im: Image.Image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise SkipItem(f"pixel limit: {_bomb_size(e)} > {max_pixels}") from None
    except UnidentifiedImageError:
        raise SkipItem("not an image") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # malformed headers surface as any of these
        raise SkipItem("truncated" if _is_truncated(e) else f"decode error: {_short(e)}") from None
    w, h = im.size
    if w * h > max_pixels:
        raise SkipItem(f"pixel limit: {w}x{h} > {max_pixels}")
    if w <= 0 or h <= 0:
        raise SkipItem("decode error: zero-sized image")
    try:
        im.load()
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise SkipItem("truncated" if _is_truncated(e) else f"decode error: {_short(e)}") from None
    try:
        im = ImageOps.exif_transpose(im)
    except Exception as e:  # a corrupt EXIF block must not lose an otherwise good photo
        log.debug("ignoring unreadable EXIF orientation (%s)", e)
    im = to_rgb(im)
    im = resize_crop(im, transform)
    arr = np.asarray(im, dtype=np.uint8)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation (1-8; 1 when absent or unreadable) of an opened image, from its header."""
    try:
        orientation = int(im.getexif().get(0x0112, 1))
    except Exception:  # an unreadable EXIF block: decoding ignores it too
        return 1
    return orientation if 1 <= orientation <= 8 else 1


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB by the rules in the module docstring.

    Raises:
        SkipItem: ``unsupported mode <mode>`` for modes Pillow cannot convert.
    """
    mode = im.mode
    if mode == "RGB":
        return im
    if mode == "P":
        mode = "RGBA" if "transparency" in im.info else "RGB"
        im = im.convert(mode)
        if mode == "RGB":
            return im
    if mode in _ALPHA_MODES:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode in ("1", "L"):
        return im.convert("RGB")
    if mode in _INT16_MODES:
        a = np.asarray(im).astype(np.int64)
        grey = (np.clip(a, 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode == "F":
        a = np.asarray(im, dtype=np.float32)
        grey = np.rint(np.clip(np.nan_to_num(a, nan=0.0), 0, 255)).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    try:
        return im.convert("RGB")
    except (ValueError, OSError):
        raise SkipItem(f"unsupported mode {im.mode}") from None


def resized_shape(h: int, w: int, transform: ImageTransform) -> tuple[int, int]:
    """(height, width) after the resize step (torchvision's rule for ``Resize(int)``)."""
    r = transform.resize if transform.crop else transform.size
    if r is None:
        return h, w
    if isinstance(r, (tuple, list)):
        return int(r[0]), int(r[1])
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = int(r), int(int(r) * long / short)
    return (new_long, new_short) if w <= h else (new_short, new_long)


def resize_crop(im: Image.Image, transform: ImageTransform) -> Image.Image:
    """Resize, then center-crop (or pad) to ``transform.size``, as torchvision does for PIL images."""
    w, h = im.size
    nh, nw = resized_shape(h, w, transform)
    if (nh, nw) != (h, w):
        im = im.resize((nw, nh), INTERPOLATIONS[transform.interpolation])
    th, tw = transform.size
    if (nh, nw) == (th, tw):
        return im
    if nh < th or nw < tw:  # torchvision pads with zeros, centred, before cropping
        canvas = Image.new("RGB", (max(nw, tw), max(nh, th)), (0, 0, 0))
        canvas.paste(im, ((tw - nw) // 2 if nw < tw else 0, (th - nh) // 2 if nh < th else 0))
        im = canvas
        nw, nh = im.size
        if (nh, nw) == (th, tw):
            return im
    top = int(round((nh - th) / 2.0))
    left = int(round((nw - tw) / 2.0))
    return im.crop((left, top, left + tw, top + th))


def _bomb_size(e: Exception) -> str:
    # Pillow: "Image size (N pixels) exceeds limit of M pixels, could be decompression bomb DOS attack."
    m = re.search(r"\((\d+) pixels\)", str(e))
    return f"{m.group(1)} pixels" if m else "decompression bomb"


def _is_truncated(e: BaseException) -> bool:
    msg = str(e).lower()
    return isinstance(e, EOFError) or any(m in msg for m in ("truncated", "premature end", "broken data stream"))


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:120]

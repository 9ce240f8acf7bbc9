"""JPEG decoding on the GPU (``--decode gpu``): readers ship the file bytes, the encoder's device decodes.

Photo runs are usually limited by JPEG decoding on the CPU. With ``--decode gpu`` the reader
processes still read each file, but for a *clean* JPEG they only parse its header (no pixels) and
send the compressed bytes; the encoder's process decodes the whole batch at once with
``torchvision.io.decode_jpeg(..., device="cuda")`` (nvjpeg), then applies EXIF orientation,
resize and center crop on the GPU, filling the same uint8 batch the CPU path would have made.

Which files go to the GPU (:func:`device_candidate`): baseline or progressive JPEG (starts with
``FF D8 FF``, ends with the ``FF D9`` end marker, so a truncated file is caught on the CPU with its
``truncated`` reason), in grey or RGB (CMYK/YCCK JPEGs are converted by Pillow), within
``--max-pixels``. Everything else (PNG, TIFF, CMYK, truncated, oversized, unreadable) is decoded by
the readers exactly as without the flag, so skip reasons do not change.

Fallbacks, so nothing is lost: when the run has no CUDA device, torchvision's image operators
do not load, or the interpolation has no tensor equivalent (only ``bilinear`` and ``bicubic``
do), the whole run decodes on the CPU with one warning (:func:`unavailable`). A file the GPU
decoder rejects is decoded on the CPU in the encoder's process (:func:`fill`), with the usual
skip reason if that fails too.

Pixels differ slightly from the CPU path: nvjpeg's IDCT and chroma upsampling are not
libjpeg-turbo's, and the antialiased tensor resize rounds differently from Pillow's (at most a
few grey levels; vectors agree to a cosine similarity above 0.999). The decoder is part of the
run's fingerprint, so a resumed run never mixes the two.
"""

from __future__ import annotations

import functools
import io
import logging
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from nenya.pipeline.items import Batch
from nenya.preprocess.config import ImageTransform
from nenya.preprocess.cpu import SkipItem, decode_image, exif_orientation, resized_shape

log = logging.getLogger(__name__)

#: interpolations with an antialiased tensor equivalent of Pillow's filter
TENSOR_INTERPOLATIONS = ("bilinear", "bicubic")
_SOI, _EOI = b"\xff\xd8\xff", b"\xff\xd9"

Decoder = Callable[[list[torch.Tensor], torch.device], list[torch.Tensor]]


@functools.lru_cache(maxsize=16)  # asked once per batch: the answer for a device and transform never changes
def unavailable(device: torch.device, transform: ImageTransform | None) -> str | None:
    """Why ``--decode gpu`` cannot run here (None: it can).

    Example:
        >>> unavailable(torch.device("cpu"), ImageTransform())
        'it needs a CUDA device and this run encodes on cpu'
    """
    if transform is None:
        return "the model takes fixed-size arrays, not photos"
    if device.type != "cuda":
        return f"it needs a CUDA device and this run encodes on {device}"
    if transform.interpolation not in TENSOR_INTERPOLATIONS:
        return (
            f"--interpolation {transform.interpolation} has no GPU equivalent "
            f"(use {' or '.join(TENSOR_INTERPOLATIONS)})"
        )
    try:
        from nenya.compat import import_torchvision

        import_torchvision(warn=False)
        from torchvision.io.image import _assert_has_image_ops

        _assert_has_image_ops()
    except Exception as e:  # an install whose torchvision lacks its compiled image operators
        return f"torchvision's image operators do not load ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
    return None


def device_candidate(data: bytes, *, max_pixels: int) -> int | None:
    """The EXIF orientation (1-8) of a JPEG to decode on the device, or None to decode it on the CPU.

    Reads the header only (Pillow's lazy open): no pixel is decoded here.
    """
    if not data.startswith(_SOI) or not data.rstrip(b"\x00\r\n ").endswith(_EOI):
        return None
    try:
        from PIL import Image

        im = Image.open(io.BytesIO(data))
        if im.format != "JPEG" or im.mode not in ("L", "RGB"):
            return None
        w, h = im.size
        if w <= 0 or h <= 0 or w * h > max_pixels:
            return None
        return exif_orientation(im)
    except Exception:
        return None


def orient(img: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation to a (C, H, W) tensor, as ``PIL.ImageOps.exif_transpose`` does."""
    if orientation == 2:
        return img.flip(-1)
    if orientation == 3:
        return img.flip(-1, -2)
    if orientation == 4:
        return img.flip(-2)
    if orientation == 5:
        return img.transpose(-1, -2)
    if orientation == 6:
        return torch.rot90(img, -1, dims=(-2, -1))
    if orientation == 7:
        return img.transpose(-1, -2).flip(-1, -2)
    if orientation == 8:
        return torch.rot90(img, 1, dims=(-2, -1))
    return img


def resize_crop(img: torch.Tensor, transform: ImageTransform) -> torch.Tensor:
    """Resize and center-crop (or zero-pad) a uint8 (3, H, W) tensor on its device, by the rules
    of :func:`nenya.preprocess.cpu.resize_crop` (antialiased, as Pillow resizes)."""
    if transform.interpolation not in TENSOR_INTERPOLATIONS:
        raise ValueError(f"no tensor resize for {transform.interpolation!r}; expected one of {TENSOR_INTERPOLATIONS}")
    _, h, w = img.shape
    nh, nw = resized_shape(h, w, transform)
    if (nh, nw) != (h, w):
        x = F.interpolate(
            img[None].float(), size=(nh, nw), mode=transform.interpolation, antialias=True, align_corners=False
        )
        img = x[0].round_().clamp_(0, 255).to(torch.uint8)
    th, tw = transform.size
    if (nh, nw) == (th, tw):
        return img
    if nh < th or nw < tw:  # zero padding, centred, as torchvision pads before cropping
        top, left = ((th - nh) // 2 if nh < th else 0), ((tw - nw) // 2 if nw < tw else 0)
        canvas = img.new_zeros((img.shape[0], max(nh, th), max(nw, tw)))
        canvas[:, top : top + nh, left : left + nw] = img
        img, (nh, nw) = canvas, canvas.shape[1:]
        if (nh, nw) == (th, tw):
            return img
    top, left = int(round((nh - th) / 2.0)), int(round((nw - tw) / 2.0))
    return img[:, top : top + th, left : left + tw]


def nvjpeg(datas: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """torchvision's batched ``decode_jpeg`` to RGB on ``device`` (nvjpeg on CUDA)."""
    from nenya.compat import import_torchvision

    import_torchvision(warn=False)
    from torchvision.io import ImageReadMode, decode_jpeg

    return decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)


def _decode_each(datas: list[torch.Tensor], device: torch.device, decoder: Decoder) -> list[torch.Tensor | None]:
    """Decode a batch in one call; when that fails, item by item (None for the ones that fail)."""
    try:
        out = decoder(datas, device)
        if len(out) == len(datas):
            return list(out)
    except Exception as e:
        log.debug("batched device decode failed (%s); decoding item by item", e)
    results: list[torch.Tensor | None] = []
    for d in datas:
        try:
            results.append(decoder([d], device)[0])
        except Exception as e:
            log.debug("device decode failed (%s); decoding on the CPU", e)
            results.append(None)
    return results


def fill(
    x: torch.Tensor,
    encoded: Sequence[tuple[int, bytes, int]],
    status: list[str],
    *,
    transform: ImageTransform,
    decoder: Decoder | None = None,
) -> None:
    """Decode ``encoded`` items (batch slot, JPEG file bytes, EXIF orientation) into ``x``.

    ``x`` is the batch's uint8 (B, 3, H, W) tensor on the encoder's device; the slots of shipped
    items hold zeros until now. Items the device decoder rejects are decoded on the CPU (and
    skipped with their reason, written into ``status``, if that fails too). With no usable
    device decoder (``decoder`` None and :func:`unavailable`), everything is decoded on the CPU.
    """
    if not encoded:
        return
    if decoder is None:
        decoder = nvjpeg if unavailable(x.device, transform) is None else None
    slots = [slot for slot, _, _ in encoded]
    raw = [d for _, d, _ in encoded]
    datas = [as_bytes_tensor(d) for d in raw]  # the 1-D uint8 CPU tensors decode_jpeg takes
    images = _decode_each(datas, x.device, decoder) if decoder is not None else [None] * len(datas)
    for slot, data, orientation, img in zip(slots, raw, (o for _, _, o in encoded), images):
        if img is not None:
            try:
                if img.shape[0] == 1:
                    img = img.expand(3, -1, -1)
                x[slot] = resize_crop(orient(img.to(x.device), orientation), transform)
                continue
            except Exception as e:  # an odd size or a decoder output of the wrong kind
                log.debug("device resize failed (%s); decoding on the CPU", e)
        try:
            # the pixel limit was checked from the header in the reader (device_candidate)
            arr = decode_image(data, transform=transform, max_pixels=2**62)
            x[slot] = torch.from_numpy(arr).to(x.device)
        except SkipItem as e:
            status[slot] = f"skipped:{e.reason}"
        except Exception as e:
            status[slot] = f"skipped:decode error: {type(e).__name__}"


def as_bytes_tensor(data: bytes) -> torch.Tensor:
    """File bytes as the 1-D uint8 CPU tensor ``decode_jpeg`` takes."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def decode_on_device(batch: Batch, *, transform: ImageTransform, device: torch.device) -> None:
    """Decode the JPEGs a reader left for the device (``batch.encoded``) into the batch's pixels,
    which then sit on ``device``; items that cannot be decoded get their skip reason."""
    if not batch.encoded:
        return
    data = batch.data if isinstance(batch.data, torch.Tensor) else torch.from_numpy(batch.data)
    x = data.to(device, non_blocking=True)
    status = list(batch.status or ["ok"] * len(batch))
    fill(x, batch.encoded, status, transform=transform)
    batch.data, batch.encoded = x, None
    batch.status = None if all(s == "ok" for s in status) else status

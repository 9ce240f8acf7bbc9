"""Reconstruction: an embedding, or an image through its embedding, decoded back into an image
(``nenya reconstruct``)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from nenya._errors import InputError
from nenya.encoders.autoencoder import AutoencoderEncoder, crop_batch
from nenya.pipeline import storage
from nenya.train.data import split_data_spec


def load_autoencoder(path: str | os.PathLike, *, trust_checkpoint: bool = False) -> AutoencoderEncoder:
    """The :class:`AutoencoderEncoder` of a checkpoint (its ``.autoencoder`` also decodes)."""
    return AutoencoderEncoder.from_checkpoint(path, trust_checkpoint=trust_checkpoint)


def read_input(spec: str) -> np.ndarray:
    """An array from ``x.npy``, ``x.npy:ROW`` or a preproc reference ``file.h5:PARTITION:ROW``."""
    path, key, row = split_data_spec(spec)
    local = storage.fetch(path)
    if not os.path.exists(local):
        raise InputError(f"input not found: {path}")
    if local.endswith(".npy"):
        arr = np.load(local)
        return arr[row] if row is not None else arr
    if local.endswith((".h5", ".hdf5")):
        if key is None or row is None:
            raise InputError(f"name one image of {path} as {path}:PARTITION:ROW, e.g. {path}:valid:12")
        from nenya.sources.h5files import open_checked

        with open_checked(local) as f:
            if key not in f:
                raise InputError(f"{path} has no partition {key!r}; it holds {sorted(f.keys())}")
            if not 0 <= row < f[key].shape[0]:
                raise InputError(f"{path}:{key} has {f[key].shape[0]} rows; row {row} does not exist")
            return np.asarray(f[key][row])
    raise InputError(f"cannot read {spec}: expected a .npy file or file.h5:PARTITION:ROW")


@dataclass
class Reconstruction:
    """What :func:`reconstruct` wrote: the .npy, the PNGs, the shape and the input kind."""

    npy: str
    pngs: list[str]
    shape: tuple[int, ...]
    kind: str


def _as_images(arr: np.ndarray) -> tuple[np.ndarray, bool]:
    """Images as (N, C, H, W), and whether the input was one image."""
    if arr.ndim == 2:
        return arr[None, None], True
    if arr.ndim == 3:
        return arr[None], True
    if arr.ndim != 4:
        raise InputError(f"images must be (H, W), (C, H, W) or (N, C, H, W); got {arr.shape}")
    return arr, False


def _decode(enc: AutoencoderEncoder, arr: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray, str, bool]:
    """Decode an embedding, or an image through its embedding, back to the input's units.

    Returns:
        ``(reconstruction (N, C, h, w) float32, the input as decoded (images as (N, C, H, W)),
        the kind, whether the input was one item)``.
    """
    opt = enc.opt
    nd = int(opt.num_dense)
    if kind == "auto":
        image_like = arr.ndim >= 2 and tuple(arr.shape[-2:]) in (tuple(opt.raw_shape[1:]), tuple(opt.input_shape[1:]))
        kind = "embedding" if arr.ndim in (1, 2) and arr.shape[-1] == nd and not image_like else "image"
    offset = None
    if kind == "embedding":
        if arr.shape[-1] != nd or arr.ndim not in (1, 2):
            raise InputError(f"an embedding must be ({nd},) or (N, {nd}) for this model; got {arr.shape}")
        single = arr.ndim == 1
        z = torch.as_tensor(np.atleast_2d(arr), dtype=torch.float32, device=enc.device)
    elif kind == "image":
        arr, single = _as_images(arr)
        x = torch.as_tensor(arr)
        z = enc.encode(x)
        if enc.preprocess.demean:
            cropped = crop_batch(x, enc.crop_box).float()
            cropped = cropped / 255.0 if x.dtype == torch.uint8 else cropped
            offset = cropped.mean(dim=(1, 2, 3), keepdim=True)
    else:
        raise ValueError(f"kind must be auto, embedding or image; got {kind!r}")
    with torch.inference_mode():
        out = enc.autoencoder.eval().decode(z.float()).float().cpu()
    pre = enc.preprocess
    if pre.std is not None:
        out = out * torch.tensor(pre.std).view(1, -1, 1, 1)
    if pre.mean is not None:
        out = out + torch.tensor(pre.mean).view(1, -1, 1, 1)
    if offset is not None:
        out = out + offset.cpu()
    return out.numpy().astype(np.float32), arr, kind, single


def _write_pngs(stem: str, imgs: np.ndarray, cmap: str) -> list[str]:
    """Channel 0 of (up to 16 of) the reconstructions as PNGs."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    pngs = []
    for i, img in enumerate(imgs[:16]):
        png = f"{stem}.png" if len(imgs) == 1 else f"{stem}_{i}.png"
        ch0 = img[0]
        lim = float(np.abs(ch0).max()) or 1.0
        plt.imsave(png, ch0, cmap=cmap, vmin=-lim if ch0.min() < 0 else ch0.min(), vmax=lim)
        pngs.append(png)
    return pngs


def _write_compare(path: str, enc: AutoencoderEncoder, images: np.ndarray, recon: np.ndarray, cmap: str) -> None:
    """The first input (cropped) beside its reconstruction, on the input's colour scale."""
    from matplotlib.figure import Figure

    src = crop_batch(torch.as_tensor(images), enc.crop_box).float().numpy()
    src = src / 255.0 if images.dtype == np.uint8 else src
    fig = Figure(figsize=(8, 4), dpi=100)
    for j, (title, im) in enumerate((("input (cropped)", src[0, 0]), ("reconstruction", recon[0]))):
        ax = fig.add_subplot(1, 2, j + 1)
        ax.imshow(im, cmap=cmap, vmin=float(src[0, 0].min()), vmax=float(src[0, 0].max()))
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)


def reconstruct(
    checkpoint: str | os.PathLike,
    input: str | np.ndarray,
    output: str | os.PathLike,
    *,
    kind: str = "auto",
    device: str = "cpu",
    trust_checkpoint: bool = False,
    cmap: str = "RdBu_r",
) -> Reconstruction:
    """Decode an embedding, or an image through its embedding, back into an image; save .npy and PNG.

    Args:
        checkpoint: an autoencoder ``last.pth``.
        input: an array, ``x.npy`` (an embedding (num_dense,) / (N, num_dense), or images (H, W),
            (C, H, W), (N, C, H, W)), ``x.npy:ROW`` or ``file.h5:PARTITION:ROW``.
        output: ``out.npy`` or a stem; writes ``<stem>.npy`` and ``<stem>.png`` (``<stem>_<i>.png``
            for several), plus ``<stem>_compare.png`` (input | reconstruction) for image inputs.
        kind: ``auto``, ``embedding`` or ``image``.

    The reconstruction is returned in the input's units: the training mean/std is undone, and for
    models trained with ``demean`` an image input's own mean is added back (an embedding has none).
    Images come out at the cropped size the model was trained on, shape (C, h, w) or (N, C, h, w).
    """
    enc = load_autoencoder(checkpoint, trust_checkpoint=trust_checkpoint).to(device, "fp32", channels_last=False)
    arr = read_input(input) if isinstance(input, (str, os.PathLike)) else np.asarray(input)
    out, arr, kind, single = _decode(enc, arr, kind)
    result = out[0] if single else out
    stem = str(output)[:-4] if str(output).endswith(".npy") else str(output)
    os.makedirs(os.path.dirname(os.path.abspath(stem)) or ".", exist_ok=True)
    np.save(stem + ".npy", result)
    imgs = result[None] if single else result
    pngs = _write_pngs(stem, imgs, cmap)
    if kind == "image":
        _write_compare(f"{stem}_compare.png", enc, arr, imgs[0], cmap)
        pngs.append(f"{stem}_compare.png")
    return Reconstruction(npy=stem + ".npy", pngs=pngs, shape=tuple(result.shape), kind=kind)

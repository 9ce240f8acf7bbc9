"""Query images for similarity search: the model that made a latents file, loaded once, encoding a
cutout (``.npy``) or a photo (image bytes) exactly as extraction does.

Used by ``nenya search --image`` and by ``nenya serve`` (uploads), so a query lands where the same
image would have landed in the collection. Uploads are decoded from memory with the extraction's
hardened readers: ``.npy`` without pickles, images under the pixel limit.
"""

from __future__ import annotations

import io
import logging
import os
from typing import TYPE_CHECKING

import numpy as np

from nenya._errors import InputError, NenyaError
from nenya.pipeline import storage

if TYPE_CHECKING:
    from nenya.encoders import EncoderOptions

log = logging.getLogger(__name__)

__all__ = ["QueryEncoder", "IMAGE_SUFFIXES"]

#: file name endings a query may have besides ``.npy`` (photo models only)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif")


class QueryEncoder:
    """Encode query images with one model.

    Args:
        spec: the encoder spec (``supcon:last.pth``, ``timm:resnet18``, ...).
        opt: the model's opts JSON, where it needs one.
        trust_checkpoint: unpickle anything in the checkpoint (trusted files only).
        options: the photo-model options (size, pool, ...) the latents were made with.
    """

    def __init__(
        self,
        spec: str,
        *,
        opt: str | None = None,
        trust_checkpoint: bool = False,
        options: EncoderOptions | None = None,
    ) -> None:
        from nenya.encoders import load_encoder

        self.spec = spec
        self.encoder = load_encoder(spec, opt=opt, trust_checkpoint=trust_checkpoint, options=options).to("cpu")

    @classmethod
    def from_about(
        cls,
        about: dict | None,
        *,
        model: str | None = None,
        opts: str | None = None,
        trust_checkpoint: bool = False,
    ) -> QueryEncoder:
        """The model a latents file records (its spec, photo options and opts file), unless ``model``
        names another (then a warning: distances across models mean nothing)."""
        from nenya.encoders.base import options_from_about

        about = about or {}
        recorded = about.get("model")
        spec = model or recorded
        if not spec:
            raise NenyaError(
                "these latents do not record the model that made them: name it with --model SPEC (see `nenya models`)"
            )
        options = None
        if recorded and spec == recorded:
            options = options_from_about(about)
            opts = opts or about.get("opts")
            extra = ", ".join(f"{k}={v}" for k, v in (about.get("options") or {}).items())
            log.info("encoding queries with %s%s, as the latents were made", spec, f" ({extra})" if extra else "")
        elif recorded:
            log.warning(
                "these latents were made by %s but the query is encoded by %s: distances are only meaningful "
                "between vectors of the same model and preprocessing",
                recorded,
                spec,
            )
        return cls(spec, opt=opts, trust_checkpoint=trust_checkpoint, options=options)

    @property
    def takes_images(self) -> bool:
        """Whether the model reads image files (photo models), not only arrays."""
        return self.encoder.preprocess.image is not None

    def encode_file(self, path: str) -> np.ndarray:
        """The latent vector (1, dim) of the image or ``.npy`` cutout at ``path`` (local or URL)."""
        local = storage.fetch(path)
        if not os.path.exists(local):
            raise InputError(f"query image not found: {path}")
        with open(local, "rb") as f:
            return self.encode_bytes(f.read(), path)

    def encode_bytes(self, data: bytes, name: str) -> np.ndarray:
        """The latent vector (1, dim) of a query held in memory; ``name`` (its file name) says what it is:
        ``.npy`` (a cutout, (H, W) or (C, H, W)) or an image file (photo models)."""
        import torch

        lower = name.lower()
        if lower.endswith(".npy"):
            batch = torch.from_numpy(self._cutout(data, name)[None])
        elif lower.endswith(IMAGE_SUFFIXES):
            batch = torch.from_numpy(self._photo(data, name)[None])
        else:
            raise InputError(
                f"{name}: a query is a .npy cutout or an image file ({', '.join(IMAGE_SUFFIXES)}); got neither"
            )
        out = self.encoder.encode(batch).cpu().numpy()
        if out.ndim != 2:
            raise InputError(
                f"{self.encoder.name} gives one vector per tile {out.shape[1:]}; search an index of "
                "pooled vectors, or pass the query with --vector"
            )
        return out.reshape(1, -1).astype(np.float32)

    def _cutout(self, data: bytes, name: str) -> np.ndarray:
        try:
            img = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as e:  # pickled object arrays are refused here, as everywhere
            if "allow_pickle" in str(e):
                raise InputError(
                    f"{name}: not a plain .npy array (it holds pickled objects, which are refused)"
                ) from None
            raise InputError(f"{name}: not a readable .npy file ({e})") from None
        except (OSError, EOFError) as e:
            raise InputError(f"{name}: not a readable .npy file ({e})") from None
        if not isinstance(img, np.ndarray) or img.dtype.kind not in "fiub":
            raise InputError(f"{name}: a query cutout holds numbers; got {getattr(img, 'dtype', type(img))}")
        img = img.astype(np.float32)
        if img.ndim == 2:
            img = img[None]
        if img.ndim != 3:
            raise InputError(f"{name} has shape {img.shape}; a query cutout is (H, W) or (C, H, W)")
        if not np.isfinite(img).all():
            raise InputError(f"{name}: the cutout holds NaN or infinite values")
        return np.ascontiguousarray(img)

    def _photo(self, data: bytes, name: str) -> np.ndarray:
        from nenya.preprocess import SkipItem, decode_image

        transform = self.encoder.preprocess.image
        if transform is None:
            raise InputError(f"{self.encoder.name} encodes arrays, not image files: give the query as a .npy cutout")
        try:
            arr = decode_image(data, transform=transform)
        except SkipItem as e:
            raise InputError(f"{name}: {e}") from None
        return np.ascontiguousarray(arr)

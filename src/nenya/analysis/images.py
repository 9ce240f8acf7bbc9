"""The picture behind a latent vector: an SST cutout from its preproc file, or a photo from its ``path``.

SST rows are matched to the preproc file by ``partition``/``row`` (the columns every nenya latents
layout carries); photo rows by the ``path`` column (relative paths are taken from ``image_root``).
Ids are never used as file names.
"""

from __future__ import annotations

import base64
import io
import logging
import os
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import pandas as pd

from nenya._errors import InputError
from nenya.pipeline import storage

log = logging.getLogger(__name__)

__all__ = ["ImageLookup", "Images", "anomaly_rgb", "to_data_uri", "ANOMALY_CMAP"]

ANOMALY_CMAP = "RdBu_r"


def anomaly_rgb(img: np.ndarray, vmax: float | None = None, cmap: str = ANOMALY_CMAP) -> np.ndarray:
    """An anomaly field as RGB uint8 with a colour scale symmetric about 0 (``vmax``: its own max |value|)."""
    import matplotlib

    a = np.asarray(img, dtype=np.float32)
    finite = np.isfinite(a)
    if vmax is None:
        vmax = float(np.max(np.abs(a[finite]))) if finite.any() else 1.0
    vmax = vmax if vmax > 0 else 1.0
    rgba = matplotlib.colormaps[cmap](np.clip((a / vmax + 1) / 2, 0, 1))
    rgba[~finite] = (0.6, 0.6, 0.6, 1.0)
    return (rgba[..., :3] * 255).round().astype(np.uint8)


def to_data_uri(rgb: np.ndarray, *, fmt: str = "JPEG", quality: int = 85) -> str:
    """An RGB uint8 image as a ``data:`` URI (inline, no file)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt, quality=quality)
    mime = "image/jpeg" if fmt.upper() == "JPEG" else f"image/{fmt.lower()}"
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class Images(Protocol):
    """Where pictures of table rows come from: ``kind`` (``"anomaly"``, ``"photo"`` or None) and
    ``get(rows)`` (an image or None per row). :class:`ImageLookup` is one."""

    kind: str | None

    def get(self, rows: Sequence[int] | np.ndarray) -> list[np.ndarray | None]: ...


class ImageLookup:
    """Images for rows of a latents table.

    Args:
        table: the rows' metadata (``partition``/``row`` for SST, ``path`` for photos).
        images: a preproc HDF5 file (local or URL) holding the cutouts of these latents.
        image_root: folder (or URL) that relative ``path`` values are relative to.
        size: side of photo thumbnails (square, centre-cropped).

    Attributes:
        kind: ``"anomaly"`` (SST cutouts: 2-D float arrays), ``"photo"`` (RGB uint8) or None (no images).
    """

    def __init__(
        self, table: pd.DataFrame, *, images: str | None = None, image_root: str | None = None, size: int = 64
    ) -> None:
        self.table = table.reset_index(drop=True)
        self.images = images
        self.image_root = image_root
        self.size = size
        self._local: str | None = None
        self._parts: np.ndarray | None = None  # each row's partition, computed once (thumbnails come one by one)
        if images is not None:
            if "row" not in self.table.columns:
                raise InputError(
                    f"the latents have no 'row' column to match with {images}; "
                    "SST latents from `nenya extract` carry partition and row"
                )
            self.kind: str | None = "anomaly"
        elif "path" in self.table.columns:
            self.kind = "photo"
        else:
            self.kind = None

    def _preproc(self) -> str:
        if self._local is None:
            assert self.images is not None
            self._local = (
                storage.fetch(self.images) if storage.is_remote(self.images) else storage.local_path(self.images)
            )
            if not os.path.exists(self._local):
                raise InputError(f"preproc file not found: {self.images}")
        return self._local

    def get(self, rows: Sequence[int] | np.ndarray) -> list[np.ndarray | None]:
        """Images of the given table rows (None where one cannot be read)."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.kind == "anomaly":
            return self._cutouts(rows)
        if self.kind == "photo":
            return [self._photo(str(self.table["path"].iat[int(r)])) for r in rows]
        return [None] * len(rows)

    def _cutouts(self, rows: np.ndarray) -> list[np.ndarray | None]:
        from nenya.sources.h5files import open_checked, read_rows

        out: list[np.ndarray | None] = [None] * len(rows)
        if self._parts is None:
            self._parts = (
                self.table["partition"].astype(str).to_numpy()
                if "partition" in self.table.columns
                else np.full(len(self.table), "valid", dtype=object)
            )
        parts = self._parts
        with open_checked(self._preproc()) as f:
            for p in pd.unique(parts[rows]):
                if p not in f:
                    raise InputError(
                        f"{self.images} has no partition {p!r} (it holds {sorted(f.keys())}); "
                        "is it the preproc file these latents came from?"
                    )
                sel = np.flatnonzero(parts[rows] == p)
                want = self.table["row"].to_numpy()[rows[sel]].astype(np.int64)
                order = np.argsort(want, kind="stable")
                dset = f[p]
                if len(want) and want.max() >= dset.shape[0]:
                    raise InputError(
                        f"row {int(want.max())} is beyond the {dset.shape[0]} rows of {self.images}:{p}; "
                        "is it the preproc file these latents came from?"
                    )
                uniq, inv = np.unique(want[order], return_inverse=True)
                data = read_rows(dset, uniq)
                if data.ndim == 4:
                    data = data[:, 0]
                for j, i in enumerate(sel[order]):
                    out[i] = np.asarray(data[inv[j]], dtype=np.float32)
        return out

    def _photo(self, path: str) -> np.ndarray | None:
        from PIL import Image

        if not path or path == "nan":
            return None
        if self.image_root and not storage.is_remote(path) and not os.path.isabs(path):
            path = storage.join(self.image_root, path)
        try:
            if storage.is_remote(path):
                fs, p = storage.url_to_fs(path)
                with fs.open(p, "rb") as fh:
                    data = fh.read()
            else:
                with open(storage.local_path(path), "rb") as fh:
                    data = fh.read()
            with Image.open(io.BytesIO(data)) as im:
                im.draft("RGB", (self.size * 2, self.size * 2))
                rgb = im.convert("RGB")
                w, h = rgb.size
                s = min(w, h)
                rgb = rgb.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
                return np.asarray(rgb.resize((self.size, self.size), Image.Resampling.BILINEAR))
        except Exception as e:  # one unreadable photo must not stop a plot
            log.warning("cannot read image %s: %s", path, e)
            return None

"""Fitted UMAPs on disk: the UMAP dir, and pickles written and read only there, each with a ``.sha256``
companion (umap-learn has no format but pickle, and unpickling runs code). Nenya's face
(:mod:`nenya.nenya_umap`), ``nenya umap --save-model`` and ``nenya serve --umap-model`` use these."""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
from pathlib import Path
from typing import Any

from nenya._errors import NenyaError
from nenya.config import config_value
from nenya.pipeline import storage

log = logging.getLogger(__name__)

__all__ = ["UMAPFileError", "umap_dir", "save_umap", "load_umap"]


class UMAPFileError(NenyaError):
    """A UMAP pickle is missing, outside the UMAP dir, or not one nenya wrote."""


def umap_dir() -> Path:
    """The local folder of fitted UMAPs: ``$NENYA_UMAP_DIR``, else ``umap_dir`` in the nenya config file,
    else ``<nenya cache>/umap``."""
    value = config_value("umap_dir", "NENYA_UMAP_DIR")
    return Path(value) if value else storage.cache_dir() / "umap"


def _digest(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_umap(reducer: Any, path: str | os.PathLike) -> str:
    """Pickle a fitted UMAP to a new local file, with a ``.sha256`` companion that :func:`load_umap` checks."""
    path = Path(path)
    if storage.is_remote(str(path)):
        raise ValueError(f"UMAP pickles are written to local files only; got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with storage.atomic_local(path) as tmp:
        with open(tmp, "wb") as f:
            pickle.dump(reducer, f, protocol=pickle.HIGHEST_PROTOCOL)
    with storage.atomic_local(str(path) + ".sha256") as tmp, open(tmp, "w") as f:
        f.write(_digest(path) + "\n")
    log.info("saved UMAP to %s", path)
    return str(path)


def load_umap(path: str | os.PathLike) -> Any:
    """Unpickle a UMAP that nenya wrote inside the UMAP dir (anything else is refused: unpickling runs code)."""
    folder = umap_dir().resolve()
    p = Path(path).expanduser().resolve()
    if folder != p.parent and folder not in p.parents:
        raise UMAPFileError(
            f"{path} is outside the UMAP dir {folder}; nenya unpickles UMAPs only from there "
            "(set NENYA_UMAP_DIR to the folder that holds your UMAP files)"
        )
    if not p.is_file():
        raise UMAPFileError(
            f"UMAP file not found: {p}. Fit one with nenya.nenya_umap.umap_subset(..., "
            f"umap_savefile={p.name!r}) or copy your UMAP files into {folder}"
        )
    companion = Path(str(p) + ".sha256")
    if not companion.is_file() or companion.read_text().strip() != _digest(p):
        raise UMAPFileError(
            f"{p} was not written by nenya (its {companion.name} is missing or does not match); "
            "refit it with umap_subset, which writes both files"
        )
    with open(p, "rb") as f:
        return pickle.load(f)  # noqa: S301 - only nenya's own files in the user's UMAP dir (checked above)

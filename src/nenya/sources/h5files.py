"""HDF5 helpers: safe opening, lazy per-process handles, Nenya metadata tables."""

from __future__ import annotations

import os
from typing import Any

import h5py
import numpy as np

from nenya._errors import InputError


def open_checked(path: str) -> h5py.File:
    """Open an HDF5 file read-only, with errors that say what is wrong and refusing external data."""
    if not os.path.exists(path):
        raise InputError(f"input file not found: {path}")
    if os.path.getsize(path) == 0:
        raise InputError(f"input file {path} is empty (0 bytes); re-copy it from its source")
    if not h5py.is_hdf5(path):
        raise InputError(f"{path} is not an HDF5 file; expected a Nenya preproc .h5 file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise InputError(f"cannot open {path} as HDF5 ({e}); the file may be truncated: re-copy it") from None
    for name in list(f.keys()):
        link = f.get(name, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            f.close()
            raise InputError(
                f"{path}: dataset {name!r} is an external link to {link.filename!r}; "
                "nenya refuses external links (they can read files outside the input)"
            )
        obj = f.get(name)
        if isinstance(obj, h5py.Dataset) and obj.external:
            f.close()
            raise InputError(f"{path}: dataset {name!r} uses external storage; nenya refuses it")
        if isinstance(obj, h5py.Dataset) and obj.is_virtual:
            others = sorted({s.file_name for s in obj.virtual_sources() if s.file_name != "."})
            if others:
                f.close()
                raise InputError(
                    f"{path}: dataset {name!r} is a virtual dataset reading {others[0]!r}; nenya "
                    "refuses data from other files (rewrite it as a plain dataset)"
                )
    return f


class LazyH5:
    """An HDF5 path whose handle is opened on first use in each process (fork and spawn safe)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: h5py.File | None = None
        self._pid: int | None = None

    @property
    def file(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file = open_checked(self.path)
            self._pid = os.getpid()
        return self._file

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "_file": None, "_pid": None}


def check_images(path: str, name: str, dset: h5py.Dataset) -> None:
    """Cutout datasets are (N, H, W) or (N, C, H, W) of numbers; anything else is an error."""
    if dset.ndim not in (3, 4):
        raise InputError(
            f"{path}: dataset {name!r} has shape {dset.shape}; expected (N, H, W) or (N, C, H, W) "
            "cutouts. nenya never reshapes rows silently: rewrite the file with that layout"
        )
    if not np.issubdtype(dset.dtype, np.number) or np.issubdtype(dset.dtype, np.complexfloating):
        raise InputError(f"{path}: dataset {name!r} has dtype {dset.dtype}; expected float32 cutouts")


def metadata_columns(f: h5py.File, partition: str) -> list[str]:
    meta = f.get(f"{partition}_metadata")
    if not isinstance(meta, h5py.Dataset) or "columns" not in meta.attrs:
        return []
    return [c.decode() if isinstance(c, bytes) else str(c) for c in meta.attrs["columns"]]


def read_rows(dset: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """Read the given increasing rows with as few contiguous slab reads as possible."""
    if len(rows) == 0:
        return np.empty((0,) + dset.shape[1:], dset.dtype)
    lo, hi = int(rows[0]), int(rows[-1]) + 1
    if hi - lo == len(rows):
        return dset[lo:hi]
    if hi - lo <= 4 * len(rows):  # one slab and a take beats many small reads
        return dset[lo:hi][rows - lo]
    return dset[rows]


def as_strings(arr: np.ndarray) -> np.ndarray:
    """Byte-string table cells -> str (Nenya stores numbers as text too)."""
    if arr.dtype.kind == "S":
        return np.char.decode(arr, "utf-8")
    return arr.astype(str)

"""In-memory (or memory-mapped, or HDF5) arrays of images as a source (Python API only)."""

from __future__ import annotations

import hashlib
import logging
import mmap
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from nenya._errors import InputError
from nenya.pipeline.items import Batch, Group, Plan, Shard
from nenya.sources import Source

log = logging.getLogger(__name__)


class ArraySource(Source):
    """A stack of equally sized images: (N, H, W) or (N, C, H, W), uint8 or float.

    uint8 batches stay uint8 (the encoder scales them to [0, 1], as for photos); any other
    dtype is read as float32 (as Nenya cutouts are). (N, H, W) gains a channel axis.

    ``np.memmap`` arrays and h5py datasets are not copied into memory, nor pickled with their
    data: workers reopen them by file name (a memmap by file/offset/shape, a dataset by file
    and name) and read only their own rows.

    Example:
        >>> src = ArraySource(np.random.rand(100, 64, 64).astype("float32"), ids=[f"c{i}" for i in range(100)],
        ...                   metadata={"lat": lats, "lon": lons})

    Args:
        array: the images.
        ids: one id per image (default ``"0"``, ``"1"``, ...); must be unique.
        metadata: columns (name -> sequence of N values) carried into the output.
        name: the stem of this source's single output (the sink adds its extension).
        key: the group's name (the output's key; ``arrays`` by default).

    Raises:
        InputError: a shape that is not a stack of images, or ids/metadata of the wrong length.
    """

    def __init__(
        self,
        array: Any,
        *,
        ids: Sequence[str] | None = None,
        metadata: Mapping[str, Sequence[Any]] | None = None,
        name: str = "vectors",
        key: str = "arrays",
    ) -> None:
        if hasattr(array, "detach") and hasattr(array, "numpy"):  # a torch tensor
            array = array.detach().cpu().numpy()
        shape = tuple(getattr(array, "shape", ()))
        if len(shape) not in (3, 4):
            raise InputError(
                f"expected images as (N, H, W) or (N, C, H, W), got shape {shape}; "
                "add a leading batch axis for a single image"
            )
        self.shape = shape
        self.dtype = np.dtype(array.dtype)
        n = shape[0]
        self.ids = [str(i) for i in range(n)] if ids is None else [str(i) for i in ids]
        if len(self.ids) != n:
            raise InputError(f"{len(self.ids)} ids for {n} images; give one id per image")
        if len(set(self.ids)) != n:
            dup = next(i for i, c in Counter(self.ids).items() if c > 1)
            raise InputError(f"ids are not unique, e.g. {dup!r}; give unique ids")
        self.metadata: dict[str, np.ndarray] = {}
        for name, col in (metadata or {}).items():
            values = np.asarray(col)
            if values.ndim != 1 or len(values) != n:
                raise InputError(
                    f"metadata column {name!r} has shape {values.shape}; expected ({n},), one value per image"
                )
            if name in ("id", "vector"):
                raise InputError(f"metadata column name {name!r} is reserved for the output; rename it")
            self.metadata[str(name)] = values
        self.name = name
        self.key = key
        self._array = array
        self._reopen: tuple | None = None
        # Only a whole map is reopened by name: a view of one keeps its parent's offset attribute.
        if isinstance(array, np.memmap) and array.filename and isinstance(array.base, mmap.mmap):
            order = "F" if array.flags.f_contiguous and not array.flags.c_contiguous else "C"
            self._reopen = ("memmap", str(array.filename), int(array.offset), self.dtype.str, shape, order)
        elif type(array).__module__.startswith("h5py"):
            self._reopen = ("h5", str(array.file.filename), str(array.name))

    def __len__(self) -> int:
        return self.shape[0]

    def _data(self):
        if self._array is None:
            kind = self._reopen[0]
            if kind == "memmap":
                _, path, offset, dtype, shape, order = self._reopen
                self._array = np.memmap(path, mode="r", dtype=np.dtype(dtype), shape=shape, offset=offset, order=order)
            else:
                import h5py

                _, path, name = self._reopen
                self._array = h5py.File(path, "r")[name]
        return self._array

    def fingerprint(self) -> str:
        """sha256 of the ids, shape, dtype, metadata names and the first and last image's bytes
        (hashing every pixel of a large memory map would cost a full read)."""
        h = hashlib.sha256("\0".join(self.ids).encode())
        h.update(repr((self.shape, self.dtype.str, sorted(self.metadata))).encode())
        if self.shape[0]:
            data = self._data()
            h.update(np.ascontiguousarray(data[0]).tobytes())
            h.update(np.ascontiguousarray(data[self.shape[0] - 1]).tobytes())
        return h.hexdigest()[:16]

    def plan(self, shard_size: int) -> Plan:
        if shard_size <= 0:
            raise ValueError(f"shard_size must be positive, got {shard_size}")
        n = self.shape[0]
        group = Group(self.key, self.key, self.name, {"": n}, {"": list(self.metadata)}, self.fingerprint())
        shards = [Shard(self.key, "", i, a, min(n, a + shard_size)) for i, a in enumerate(range(0, n, shard_size))]
        return Plan([group], shards)

    def read(self, shard: Shard, batch_size: int) -> Iterator[Batch]:
        arr = self._data()
        for a in range(shard.start, shard.stop, batch_size):
            b = min(shard.stop, a + batch_size)
            data = np.asarray(arr[a:b])
            if data.ndim == 3:
                data = data[:, None]
            if data.dtype != np.uint8 and data.dtype != np.float32:
                data = data.astype(np.float32)
            positions = np.arange(a, b, dtype=np.int64)
            meta = {k: v[a:b] for k, v in self.metadata.items()}
            yield Batch(
                shard,
                self.ids[a:b],
                positions,
                positions.copy(),
                np.ascontiguousarray(data),
                meta,
                last=b >= shard.stop,
            )

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        if self._reopen is not None:
            state["_array"] = None  # reopened lazily by file name in the worker
        return state

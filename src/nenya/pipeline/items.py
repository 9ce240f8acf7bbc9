"""The units that flow through the runner: shards (units of work and commit) and batches."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Shard:
    """A contiguous run of items of one partition of one input group.

    ``start``/``stop`` are positions in the source's item list for that partition (which
    may be a subset of the rows, e.g. with ``allowed_indices``). A shard is read by one
    worker, written as one part and committed once.
    """

    group: str
    partition: str
    index: int
    start: int
    stop: int

    @property
    def key(self) -> str:
        """Stable name of the shard within its group (used for part files and markers)."""
        return f"{self.partition or 'items'}-{self.index:06d}"

    def __len__(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Group:
    """One output unit: for Nenya, one preproc file -> one latents file.

    ``partitions`` maps partition name -> number of items; ``metadata_columns`` maps
    partition -> metadata column names (empty when the input has none).
    """

    key: str
    url: str
    output_name: str
    partitions: dict[str, int]
    metadata_columns: dict[str, list[str]] = field(default_factory=dict)
    fingerprint: str = ""


@dataclass
class Batch:
    """Items of one shard, read together: arrays stacked, metadata as columns of strings.

    ``positions`` are positions in the partition's item list; ``rows`` the rows of the
    underlying input (equal to positions unless a subset was selected).
    """

    shard: Shard
    ids: list[str]
    positions: np.ndarray
    rows: np.ndarray
    data: np.ndarray
    metadata: dict[str, np.ndarray] = field(default_factory=dict)
    last: bool = False
    status: list[str] | None = None
    worker: int = -1  # the reader process that made it (-1: the main process)
    read_seconds: float = 0.0  # time its reader spent reading and decoding it
    decode_seconds: float = 0.0  # the decoding part of read_seconds (image sources)
    #: photos left for the device to decode (``--decode gpu``): (slot in ``data``, the file's bytes,
    #: EXIF orientation); their slots in ``data`` hold zeros until then. Plain bytes, not tensors:
    #: thousands of small tensors in flight from reader processes would each hold a shared-memory
    #: file descriptor
    encoded: list[tuple[int, bytes, int]] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def pin_memory(self) -> Batch:
        """Pin the pixels (the DataLoader calls this with ``pin_memory=True``), so the copy to the
        GPU is asynchronous: without it a dataclass batch would stay in pageable memory."""
        import torch

        if isinstance(self.data, torch.Tensor) and not self.data.is_pinned():
            self.data = self.data.pin_memory()
        return self


@dataclass(frozen=True)
class Plan:
    """Everything a run will do: its groups and the shards of each, in order."""

    groups: list[Group]
    shards: list[Shard]

    def group(self, key: str) -> Group:
        for g in self.groups:
            if g.key == key:
                return g
        raise KeyError(key)

    @property
    def total(self) -> int:
        return sum(len(s) for s in self.shards)

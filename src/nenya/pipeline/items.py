"""The units that flow through the runner: shards (units of work and commit), batches, and the
typed per-stage timings every engine fills the same way."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

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

    ``name`` is the stem the source proposes for its output (``X_latents_Y`` for ``X_preproc_Y.h5``,
    ``vectors`` for a collection); the sink adds its extension or uses a name of its own. ``partitions`` maps partition name -> number of items; ``metadata_columns`` maps
    partition -> metadata column names (empty when the input has none).
    """

    key: str
    url: str
    name: str
    partitions: dict[str, int]
    metadata_columns: dict[str, list[str]] = field(default_factory=dict)
    fingerprint: str = ""


@dataclass
class ReadTiming:
    """How a batch was read: by which reader process (-1: the main one) and in how many seconds,
    of which ``decode_seconds`` went to decoding photos."""

    worker: int = -1
    read_seconds: float = 0.0
    decode_seconds: float = 0.0


@dataclass
class Batch:
    """Items of one shard, read together: arrays stacked, metadata as columns of strings.

    ``positions`` are positions in the partition's item list; ``rows`` the rows of the
    underlying input (equal to positions unless a subset was selected). ``status`` is None while
    every item is ``ok``. ``encoded`` holds the photos left for the device to decode
    (``--decode gpu``): (slot in ``data``, the file's bytes, EXIF orientation); their slots in
    ``data`` hold zeros until then. Plain bytes, not tensors: thousands of small tensors in flight
    from reader processes would each hold a shared-memory file descriptor.
    """

    shard: Shard
    ids: list[str]
    positions: np.ndarray
    rows: np.ndarray
    data: Any
    metadata: dict[str, np.ndarray] = field(default_factory=dict)
    last: bool = False
    status: list[str] | None = None
    encoded: list[tuple[int, bytes, int]] | None = None
    timing: ReadTiming = field(default_factory=ReadTiming)

    def __len__(self) -> int:
        return len(self.ids)

    def pin_memory(self) -> Batch:
        """Pin the pixels (the DataLoader calls this with ``pin_memory=True``), so the copy to the
        GPU is asynchronous: without it a dataclass batch would stay in pageable memory."""
        import torch

        if isinstance(self.data, torch.Tensor) and not self.data.is_pinned():
            self.data = self.data.pin_memory()
        return self


@dataclass
class StageTimings:
    """Seconds per stage of a run, filled the same way by every engine.

    ``read``: waiting for the next batch; ``read_in_readers`` and ``decode_in_readers``: summed over
    reader processes (they run in parallel); ``transfer``: host-to-device copies; ``decode_on_device``:
    ``--decode gpu``; ``encode``; ``write``: the writer thread busy; ``write_wait``: waiting for it
    at the end; ``finalize``: assembling and publishing outputs. ``wait``: the Ray driver waiting
    for actors. Stages that did not happen in a run are None and left out of :meth:`as_dict`.
    """

    read: float | None = None
    read_in_readers: float | None = None
    decode_in_readers: float | None = None
    transfer: float | None = None
    decode_on_device: float | None = None
    encode: float | None = None
    wait: float | None = None
    write: float | None = None
    write_wait: float | None = None
    finalize: float | None = None

    def add(self, stage: str, seconds: float) -> None:
        """Add ``seconds`` to ``stage`` (a field name)."""
        setattr(self, stage, (getattr(self, stage) or 0.0) + seconds)

    def as_dict(self) -> dict[str, float]:
        """The stages that happened, by their labels in the run summary (``read in readers``, ...)."""
        return {_LABELS.get(f.name, f.name): v for f in fields(self) if (v := getattr(self, f.name)) is not None}

    # a read-only mapping of the labels, as the summary's ``timings`` dict was
    def __getitem__(self, label: str) -> float:
        return self.as_dict()[label]

    def __contains__(self, label: object) -> bool:
        return label in self.as_dict()

    def get(self, label: str, default: float | None = None) -> float | None:
        return self.as_dict().get(label, default)

    def __iter__(self):
        return iter(self.as_dict())

    def items(self):
        return self.as_dict().items()

    def keys(self):
        return self.as_dict().keys()


_LABELS = {
    "read_in_readers": "read in readers",
    "decode_in_readers": "decode in readers",
    "decode_on_device": "decode on device",
}


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

"""Sinks: write vectors with ids and metadata, commit per shard, assemble final outputs.

A sink is one output format. To add one, write a module in this package with a :class:`Sink`
subclass and register it below (or through the ``nenya.sinks`` entry-point group): the CLI's
``--format`` choices, ``nenya models`` and the tests that run every sink come from :data:`sinks`.
A file format usually subclasses :class:`PartSink` (:mod:`nenya.sinks.parts`: shard parts, resume,
locks, the status table and atomic publishing) and implements its ``assemble``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from nenya.pipeline.items import Batch, Group, Plan, Shard
from nenya.pipeline.registry import Registry

if TYPE_CHECKING:
    from nenya.sinks.locks import LockHolder
    from nenya.sinks.parts import PartSink


@dataclass(frozen=True)
class WriteContext:
    """What a sink needs to know about a run, passed to :meth:`Sink.start`.

    Attributes:
        dim: vector length.
        fingerprint: what determines the vectors (model, weights, preprocessing, precision): a run
            resumes only parts written with the same one, and appending checks it.
        grid: (rows, cols) when each item has rows * cols tile vectors ((B, T, dim) batches).
        about: the model's description (:meth:`nenya.encoders.base.Encoder.about`) for the outputs.
        rank, world: this process among ``world`` processes writing the same outputs (torchrun
            ranks); the engine that splits the work says so here.
        job: what identifies that job (its ranks share it; "" for a single process): a lock left
            by another job's rank is never taken for one of this job's.
    """

    dim: int
    fingerprint: str = ""
    grid: tuple[int, int] | None = None
    about: dict[str, Any] = field(default_factory=dict)
    rank: int = 0
    world: int = 1
    job: str = ""


class Sink(ABC):
    """Receives batches of vectors from the runner's writer thread (one thread: no locking).

    Class attributes say what a format can do: ``ext`` (the main output's extension, "" for
    none), ``collections`` (can hold an image collection in one file, chosen by that extension),
    ``supports_ranks`` (several processes may write one output: shard parts in a shared folder).
    """

    ext: ClassVar[str] = ""
    collections: ClassVar[bool] = False
    supports_ranks: ClassVar[bool] = False
    name: str | None = None  # the output's file name when the user gave one (collections)
    suffix: str = ""  # added to a group's stem (``_debug``)

    @abstractmethod
    def start(self, plan: Plan, context: WriteContext) -> set[tuple[str, str]]:
        """Prepare for ``plan``; return the (group, shard key) pairs already committed."""

    @abstractmethod
    def write(self, batch: Batch, vectors: np.ndarray) -> None:
        """Take one batch's vectors (float32, (B, dim) or (B, T, dim) for tiles); items flagged in
        ``batch.status`` are skipped."""

    @abstractmethod
    def commit(self, shard: Shard) -> None:
        """Make everything written for ``shard`` durable; after this it counts as done."""

    @abstractmethod
    def finish(self) -> list[str]:
        """Assemble final outputs from committed shards; return their locations."""

    def abort(self) -> None:
        """Drop uncommitted state (called on errors and interruption)."""

    def committed(self) -> set[tuple[str, str]]:
        """The (group, shard key) pairs of the started plan committed so far, by any process."""
        return set()

    def output_name_for(self, stem: str) -> str:
        """The file name this sink gives the output of a group whose proposed stem is ``stem`` (its own
        name, or the stem + its suffix + ``ext``), so a caller can see whether that output exists."""
        return self.name or stem + self.suffix + self.ext

    def unfinished(self) -> set[str]:
        """Output names whose publishing was interrupted (they may exist but must be finished again)."""
        return set()

    def tidy(self) -> None:
        """With nothing left to do: remove what a killed run left that no run needs (nothing by default)."""

    def recorded_model(self, name: str) -> dict | None:
        """The model record (:meth:`~nenya.encoders.base.Encoder.about` and its ``vectors`` digest) of the
        existing output ``name``; None when there is none, it records no model, or the format keeps none."""
        return None

    def check_existing(self, name: str, context: WriteContext) -> None:
        """Refuse (an :class:`~nenya._errors.OutputError` that names the file and the fix) the existing
        output ``name`` when another model, weights, preprocessing or precision than ``context``'s made
        its vectors: a run must neither add to it nor report it as already done. Called whenever the
        output exists, whether or not there is anything new to encode. No check by default."""

    def item_counts(self) -> tuple[int, int] | None:
        """(items, skipped items) over the committed shards of the started plan, by any process and
        any earlier run (None: this sink does not keep counts; the runner counts what it wrote)."""
        return None

    def resume_ids(self) -> set[str]:
        """Resume by id: the ids an existing output already accounts for, after which new rows are
        appended (empty when there is no output to extend, or the sink does not append)."""
        return set()

    # -- coordination between ranks: only sinks with ``supports_ranks`` implement these -------
    def lock_holder(self, group: Group, rank: int) -> LockHolder | None:
        """Who holds rank ``rank``'s lock on ``group`` in this run (None: nobody since the run began)."""
        raise NotImplementedError(f"{type(self).__name__} does not support ranks")

    def post(self, group: Group, name: str, body: dict) -> None:
        """Leave a small JSON note ``name`` for the other ranks of this job next to ``group``'s output."""
        raise NotImplementedError(f"{type(self).__name__} does not support ranks")

    def read_post(self, group: Group, name: str) -> dict | None:
        """The note ``name`` on ``group`` left by :meth:`post` (None: not there yet)."""
        raise NotImplementedError(f"{type(self).__name__} does not support ranks")

    def remove_post(self, group: Group, name: str) -> None:
        """Remove the note ``name`` on ``group`` (no error when it is not there)."""
        raise NotImplementedError(f"{type(self).__name__} does not support ranks")


def vectors_of(table, column: str = "vector") -> np.ndarray:
    """The fixed-size-list column of an Arrow table as a (N, dim) array (zero-copy when possible)."""
    col = table.column(column).combine_chunks()
    dim = col.type.list_size
    return col.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)


#: Output formats by name (``--format NAME``).
sinks = Registry("sink")
sinks.register("h5", "nenya.sinks.hdf5:NenyaLatentsSink", help="Nenya _latents.h5 files (one per input file)")
sinks.register(
    "parquet",
    "nenya.sinks.parquet:ParquetSink",
    help="Parquet: id, partition, row, metadata columns, vector (fixed-size list of float32)",
)
sinks.register(
    "npy",
    "nenya.sinks.npy:NpySink",
    help=".npy vectors (N, dim) plus a Parquet file of ids and metadata in the same row order (for FAISS)",
)

sinks.register(
    "lance",
    "nenya.sinks.lance:LanceSink",
    help="a Lance dataset (id, metadata, vector) that LanceDB opens and searches: -o vectors.lance",
    install_hint='pip install "nenya[lance]"',
)

__all__ = ["PartSink", "Sink", "WriteContext", "sinks", "vectors_of"]


def __getattr__(name: str):
    if name == "PartSink":  # the base of file sinks needs pyarrow: imported on first use, not with the registry
        from nenya.sinks.parts import PartSink

        return PartSink
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

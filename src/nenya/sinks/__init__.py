"""Sinks: write vectors with ids and metadata, commit per shard, assemble final outputs."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from nenya.pipeline.items import Batch, Plan, Shard


class Sink(ABC):
    """Receives batches of vectors from the runner's writer thread (one thread: no locking)."""

    @abstractmethod
    def start(self, plan: Plan, *, dim: int, fingerprint: str,
              grid: tuple[int, int] | None = None, about: dict | None = None) -> set[tuple[str, str]]:
        """Prepare for ``plan``; return the (group, shard key) pairs already committed.

        ``grid`` = (rows, cols) when each item has rows * cols tile vectors ((B, T, dim) batches).
        ``about`` (:meth:`nenya.encoders.base.Encoder.about`) describes the model for the outputs."""

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

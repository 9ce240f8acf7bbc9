"""Sources: list work cheaply (``plan``) and read one shard into batches (``read``)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator

from nenya.pipeline.items import Batch, Plan, Shard


class Source(ABC):
    """One kind of input. Must pickle cheaply: workers receive it and open files lazily."""

    @abstractmethod
    def plan(self, shard_size: int) -> Plan:
        """List groups and shards without reading pixels."""

    @abstractmethod
    def read(self, shard: Shard, batch_size: int) -> Iterator[Batch]:
        """Yield the shard's items in order, ``batch_size`` at a time; the last has ``last=True``."""

    def close(self) -> None:
        """Release temporary copies and handles (called once by whoever made the source)."""

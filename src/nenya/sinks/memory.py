"""In-memory sink: preallocated arrays per partition (what ``model_latents_extract`` returns)."""

from __future__ import annotations

import numpy as np

from nenya.pipeline.items import Batch, Plan, Shard
from nenya.sinks import Sink, WriteContext


class ArraySink(Sink):
    """Fills ``{group: {partition: (N, dim) float32}}``; skipped items stay NaN-free zeros."""

    def __init__(self) -> None:
        self.arrays: dict[str, dict[str, np.ndarray]] = {}

    def start(self, plan: Plan, context: WriteContext) -> set[tuple[str, str]]:
        dim = context.dim
        if context.grid is not None:
            raise ValueError("ArraySink holds one vector per item; tile encoders need a file sink")
        self.arrays = {g.key: {p: np.zeros((n, dim), np.float32) for p, n in g.partitions.items()} for g in plan.groups}
        return set()

    def write(self, batch: Batch, vectors: np.ndarray) -> None:
        out = self.arrays[batch.shard.group][batch.shard.partition]
        if batch.status is not None:
            vectors = np.where((np.asarray(batch.status) == "ok")[:, None], vectors, 0.0)
        out[batch.positions] = vectors

    def commit(self, shard: Shard) -> None:
        pass

    def finish(self) -> list[str]:
        return []

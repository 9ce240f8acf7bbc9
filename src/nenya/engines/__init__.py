"""Engines: where the shards of a run are encoded. Every engine writes the same files.

- ``local`` (:class:`~nenya.engines.local.LocalEngine`): this process, DataLoader readers, one device.
- ``torchrun`` (:class:`~nenya.engines.torchrun.RankEngine`): one process per device, rank and
  world size from the environment (``torchrun`` or ``nenya extract --devices N``); each rank takes
  every world-th shard of the plan and rank 0 assembles once all are committed. No collectives.
- ``ray`` (:class:`~nenya.engines.ray.RayEngine`): an actor pool on a Ray cluster encodes whole
  shards; this process writes and commits them through the same sink.

An engine has one method, ``run(source, encoder, sink, options) -> RunSummary``, the signature of
:func:`nenya.pipeline.runner.run`; they all drive the runner's one loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # the package stays light: `--devices` imports it before torch
    from nenya.encoders.base import Encoder
    from nenya.pipeline.runner import RunOptions, RunSummary
    from nenya.sinks import Sink
    from nenya.sources import Source

ENGINES = ("auto", "local", "torchrun", "ray")


class Engine(Protocol):
    """Runs one extraction: plan, skip committed shards, encode, write, commit, assemble."""

    def run(self, source: Source, encoder: Encoder, sink: Sink, options: RunOptions) -> RunSummary: ...


__all__ = ["ENGINES", "Engine"]

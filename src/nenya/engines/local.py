"""The local engine: everything in this process (DataLoader readers, one device)."""

from __future__ import annotations

from nenya.encoders.base import Encoder
from nenya.pipeline.runner import RunOptions, RunSummary, run
from nenya.sinks import Sink
from nenya.sources import Source


class LocalEngine:
    """:func:`nenya.pipeline.runner.run` as an engine."""

    def run(self, source: Source, encoder: Encoder, sink: Sink, options: RunOptions) -> RunSummary:
        return run(source, encoder, sink, options)

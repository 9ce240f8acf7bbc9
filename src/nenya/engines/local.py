"""The local engine (the default): everything in this process (DataLoader readers, one device)."""

from __future__ import annotations

from nenya.encoders.base import Encoder
from nenya.engines import EngineOptions
from nenya.engines.runner import RunOptions, RunSummary, run
from nenya.sinks import Sink
from nenya.sources import Source


class LocalEngine:
    """:func:`nenya.engines.runner.run` as an engine."""

    decodes_on_device = True
    label = ""

    @classmethod
    def from_options(cls, options: EngineOptions) -> LocalEngine:
        return cls()

    def prepare(self, encoder: Encoder, options: RunOptions, *, compile: bool = False) -> RunOptions:
        encoder.to(options.device, options.precision, compile=compile)
        return options

    def describe(self, encoder: Encoder) -> str:
        return str(encoder.device)

    def run(self, source: Source, encoder: Encoder, sink: Sink, options: RunOptions) -> RunSummary:
        return run(source, encoder, sink, options)

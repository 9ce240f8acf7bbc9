"""Engines: where the shards of a run are encoded. Every engine writes the same files.

- ``local`` (:class:`~nenya.engines.local.LocalEngine`, the default): this process, DataLoader
  readers, one device.
- ``torchrun`` (:class:`~nenya.engines.torchrun.RankEngine`): one process per device, rank and
  world size from the environment (``torchrun`` or ``nenya extract --devices N``); each rank takes
  every world-th shard of the plan and rank 0 assembles once all are committed. No collectives.
- ``ray`` (:class:`~nenya.engines.ray.RayEngine`): an actor pool on a Ray cluster encodes whole
  shards; this process writes and commits them through the same sink.

An engine is built from :class:`EngineOptions` (``Engine.from_options``), places the encoder where
this process needs it (:meth:`Engine.prepare`) and runs (:meth:`Engine.run`, the signature of
:func:`nenya.engines.runner.run`); they all drive the runner's one loop. To add one, write a module
here and register it below (or through the ``nenya.engines`` entry-point group).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from nenya._errors import NenyaError
from nenya.pipeline.registry import Registry
from nenya.ranks import Ranks

if TYPE_CHECKING:  # the package stays light: `--devices` imports it before torch
    from nenya.encoders.base import Encoder
    from nenya.engines.runner import RunOptions, RunSummary
    from nenya.sinks import Sink
    from nenya.sources import Source


@dataclass(frozen=True)
class EngineOptions:
    """Everything any engine may need to be built (each takes what it uses).

    Attributes:
        ranks: this process's place in a multi-process job (torchrun engine).
        rank_timeout: seconds rank 0 waits without a new commit before giving up.
        builder: how remote workers build the encoder (:class:`nenya.encoders.EncoderBuilder`; Ray).
        address, actors, gpus_per_actor, cpus_per_actor: the Ray cluster and actor pool.
    """

    ranks: Ranks | None = None
    rank_timeout: float = 1800.0
    builder: Any = None
    address: str | None = None
    actors: int | None = None
    gpus_per_actor: float | None = None
    cpus_per_actor: float = 1.0


class Engine(Protocol):
    """Runs one extraction: plan, skip committed shards, encode, write, commit, assemble."""

    #: JPEGs can be decoded on the encoder's device (``--decode gpu``)
    decodes_on_device: ClassVar[bool]
    #: what this process's messages start with ("rank 1 of 4: ", "ray: ", or "")
    label: str

    @classmethod
    def from_options(cls, options: EngineOptions) -> Engine: ...

    def prepare(self, encoder: Encoder, options: RunOptions, *, compile: bool = False) -> RunOptions:
        """Place ``encoder`` where this process encodes; return the run options to use."""
        ...

    def describe(self, encoder: Encoder) -> str:
        """Where the model runs, for the user (``cpu``, ``cuda:1``, ``Ray actors``)."""
        ...

    def run(self, source: Source, encoder: Encoder, sink: Sink, options: RunOptions) -> RunSummary: ...


#: Engines by name (``--engine NAME``; ``auto`` picks torchrun under torchrun, else local).
engines = Registry("engine")
engines.register("local", "nenya.engines.local:LocalEngine", help="this process: DataLoader readers, one device")
engines.register(
    "torchrun",
    "nenya.engines.torchrun:RankEngine",
    help="one process per device (torchrun or --devices N); rank 0 assembles",
)
engines.register(
    "ray", "nenya.engines.ray:RayEngine", help="an actor pool on a Ray cluster", install_hint='pip install "nenya[ray]"'
)


def choose_engine(name: str, ranks: Ranks | None, *, devices: int | None = None) -> str:
    """The engine for ``--engine NAME`` (``auto`` resolved) with the ranks of the environment.

    ``devices`` (``--devices N``) > 1 means this process only launches ranks: ``torchrun``.
    """
    if name != "auto" and name not in engines:
        raise NenyaError(f"unknown engine {name!r}; expected auto or one of {', '.join(engines.names())}")
    distributed = ranks is not None and ranks.world > 1
    if name == "auto":
        name = "torchrun" if distributed else "local"
    if devices is not None:
        if devices < 1:
            raise NenyaError(f"--devices must be 1 or more, got {devices}")
        if distributed:
            raise NenyaError(
                "--devices starts its own ranks: do not combine it with torchrun (RANK/WORLD_SIZE are set)"
            )
        if name == "ray":
            raise NenyaError("--devices is for local ranks; with --engine ray use --actors and --gpus-per-actor")
        if devices > 1:
            return "torchrun"
    if name == "torchrun" and ranks is None:
        raise NenyaError(
            "--engine torchrun needs RANK and WORLD_SIZE in the environment: start it with "
            "`torchrun --nproc-per-node N -m nenya extract ...`, or use --devices N"
        )
    if name == "local" and distributed:
        assert ranks is not None
        raise NenyaError(
            f"WORLD_SIZE={ranks.world} is set but --engine local would make every rank encode "
            "everything; use --engine auto (or torchrun)"
        )
    return name


def default_engine() -> Engine:
    """The engine used when none is given: :class:`~nenya.engines.local.LocalEngine`."""
    return engines.get("local").from_options(EngineOptions())


__all__ = ["Engine", "EngineOptions", "choose_engine", "default_engine", "engines"]

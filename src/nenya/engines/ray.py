"""The Ray engine: an actor pool encodes whole shards; this process writes and commits them.

Each actor builds its own encoder from an :class:`EncoderBuilder` (the model spec and options:
never the model object) on its device, receives the source once (sources pickle cheaply and open
their files lazily) and, per call, reads and encodes one whole shard through the runner's
:func:`~nenya.engines.runner.encode_batch`. It returns the shard's batches (ids, positions, rows,
metadata, status; no pixels) with their vectors. The driver feeds them to the runner's
:func:`~nenya.engines.runner.drive`: one writer, the same sink code, the same commit per shard
and the same files as the local engine.

Inputs must be readable where the actors run: local paths on a one-machine cluster, URLs
(``s3://...``) on a real one. Preproc files given as URLs are fetched by each node into its cache.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator

import numpy as np

from nenya._errors import NenyaError
from nenya.encoders import EncoderBuilder
from nenya.encoders.base import Encoder
from nenya.engines import EngineOptions
from nenya.engines.runner import RunOptions, RunSummary, ShardStream, drive, encode_batch, start
from nenya.pipeline.items import Batch, Shard, StageTimings
from nenya.sinks import Sink
from nenya.sources import Source

log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "nenya[ray]"'


def _ray():
    try:
        import ray
    except ImportError:
        raise NenyaError(f"--engine ray needs Ray, which is not installed; install it with: {INSTALL_HINT}") from None
    return ray


class ShardEncoder:
    """The actor: its own encoder, the source, and one method that reads and encodes a whole shard."""

    def __init__(
        self, builder: EncoderBuilder, source: Source, batch_size: int, device: str, precision: str, threads: int
    ) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.encoder = builder.build(device, precision)
        source.localise()
        self.source, self.batch_size = source, batch_size

    def node(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def encode(self, shard: Shard) -> tuple[list[tuple[Batch, np.ndarray]], float, float, str]:
        """The shard's (batch without pixels, vectors) pairs, read and encode seconds, and this node's id.
        Reading runs one batch ahead in a thread, overlapping the encoder."""

        q: queue.Queue = queue.Queue(maxsize=2)
        t_read = 0.0

        def reader() -> None:
            nonlocal t_read
            try:
                it = iter(ShardStream(self.source, [shard], self.batch_size))
                while True:
                    t = time.perf_counter()
                    b = next(it, None)
                    t_read += time.perf_counter() - t
                    q.put(b)
                    if b is None:
                        return
            except BaseException as e:  # raised in the caller's thread below
                q.put(e)

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        out, t_encode = [], 0.0
        while True:
            item = q.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            t = time.perf_counter()
            vectors = encode_batch(self.encoder, item)
            t_encode += time.perf_counter() - t
            item.data = None
            out.append((item, vectors))
        thread.join()
        return out, t_read, t_encode, self.node()


class RayEngine:
    """Shards as Ray work: ``actors`` actors (each ``gpus_per_actor`` GPUs, ``cpus_per_actor`` CPUs).

    ``address``: ``auto``, ``ray://HOST:10001`` or ``HOST:PORT`` joins an existing cluster; None
    starts a local one for this run (stopped at the end).
    """

    #: JPEGs are decoded where the actors read (``--decode gpu`` falls back to the CPU)
    decodes_on_device = False
    label = "ray: "

    def __init__(
        self,
        builder: EncoderBuilder,
        *,
        address: str | None = None,
        actors: int | None = None,
        gpus_per_actor: float | None = None,
        cpus_per_actor: float = 1.0,
        in_flight: int = 2,
        retries: int = 2,
        init_kwargs: dict | None = None,
    ) -> None:
        _ray()
        self.builder, self.address, self.actors = builder, address, actors
        self.gpus_per_actor, self.cpus_per_actor, self.in_flight = gpus_per_actor, cpus_per_actor, in_flight
        self.retries = retries
        self.init_kwargs = init_kwargs or {}
        self.nodes: set[str] = set()

    @classmethod
    def from_options(cls, options: EngineOptions) -> RayEngine:
        if options.builder is None:
            raise NenyaError("the Ray engine needs an EncoderBuilder (how its actors build the model)")
        return cls(
            options.builder,
            address=options.address,
            actors=options.actors,
            gpus_per_actor=options.gpus_per_actor,
            cpus_per_actor=options.cpus_per_actor,
        )

    def prepare(self, encoder: Encoder, options: RunOptions, *, compile: bool = False) -> RunOptions:
        """The actors build their own encoders: this one stays on the CPU, for its dimension, grid and fingerprint."""
        encoder.to("cpu", options.precision)
        return options

    def describe(self, encoder: Encoder) -> str:
        return "Ray actors"

    def _pool_size(self, ray, gpus: float, n_shards: int) -> int:
        res = ray.cluster_resources()
        if self.actors is not None:
            n = self.actors
        elif gpus > 0:
            n = int(res.get("GPU", 0) // gpus)
        else:
            n = int(res.get("CPU", 1) // max(self.cpus_per_actor, 1e-9))
        return max(1, min(n, n_shards))

    def run(self, source: Source, encoder: Encoder, sink: Sink, options: RunOptions) -> RunSummary:
        ray = _ray()
        started_here = not ray.is_initialized()
        if started_here:
            kwargs = dict(self.init_kwargs)
            kwargs.setdefault("logging_level", logging.WARNING)
            kwargs.setdefault("log_to_driver", True)
            try:
                ray.init(address=self.address, **kwargs)
            except (ConnectionError, RuntimeError) as e:
                raise NenyaError(
                    f"cannot connect to the Ray cluster at {self.address!r}: {e}. Start one with "
                    "`ray start --head`, or leave --address out to start a local one"
                ) from None
        actors: list = []
        try:
            job = start(source, encoder, sink, options)
            if not job.todo:
                return drive(job, iter(()), sink, options)
            gpus = self.gpus_per_actor
            if gpus is None:
                gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
            n = self._pool_size(ray, gpus, len(job.todo))
            device = "cuda" if gpus > 0 else "cpu"
            remote = ray.remote(num_cpus=self.cpus_per_actor, num_gpus=gpus)(ShardEncoder)
            src = ray.put(source)  # once, for every actor (held here for the whole run)
            threads = max(1, int(self.cpus_per_actor))

            def make():
                actor = remote.remote(self.builder, src, options.batch_size, device, options.precision, threads)
                actors.append(actor)  # every actor made is killed at the end
                return actor

            pool = [make() for _ in range(n)]
            log.info(
                "ray: %d actor(s) (%s GPU, %s CPU each) for %d shard(s)", n, gpus, self.cpus_per_actor, len(job.todo)
            )
            stream = self._stream(ray, pool, make, job.todo, job.timings)
            summary = drive(job, stream, sink, options)
            log.info("ray: %d shard(s) encoded by %d actor(s) on %d node(s)", len(job.todo), n, len(self.nodes))
            return summary
        finally:
            for a in actors:
                try:
                    ray.kill(a)
                except Exception:  # already gone
                    pass
            if started_here:
                ray.shutdown()

    def _stream(
        self, ray, actors: list, make, todo: list[Shard], timings: StageTimings
    ) -> Iterator[tuple[Batch, np.ndarray]]:
        """Hand shards to idle actors (``in_flight`` each) and yield results as shards complete. An
        actor that dies (node lost, out of memory) is replaced and its shards are given out again,
        ``retries`` times per shard."""
        timings.read_in_readers = timings.encode = timings.wait = 0.0
        tries: dict[Shard, int] = {}
        pending = list(reversed(todo))
        running: dict = {}  # object ref -> (slot, shard, actor)
        load = {i: 0 for i in range(len(actors))}

        def submit() -> None:
            for i in sorted(load, key=lambda i: load[i]):
                while pending and load[i] < self.in_flight:
                    shard = pending.pop()
                    running[actors[i].encode.remote(shard)] = (i, shard, actors[i])
                    load[i] += 1

        submit()
        try:
            while running:
                t = time.perf_counter()
                ready, _ = ray.wait(list(running), num_returns=1)
                timings.add("wait", time.perf_counter() - t)
                ref = ready[0]
                i, shard, actor = running.pop(ref)
                load[i] -= 1
                try:
                    batches, t_read, t_encode, node = ray.get(ref)
                except ray.exceptions.RayTaskError as e:
                    cause = getattr(e, "cause", None)
                    if isinstance(cause, (NenyaError, KeyboardInterrupt)):
                        raise cause from None
                    raise NenyaError(
                        f"a Ray actor failed on shard {shard.key} of {shard.group}: "
                        f"{type(cause).__name__ if cause else 'error'}: {cause or e}"
                    ) from None
                except ray.exceptions.RayActorError as e:
                    tries[shard] = tries.get(shard, 0) + 1
                    if tries[shard] > self.retries:
                        raise NenyaError(
                            f"Ray actors died {tries[shard]} times while encoding shard {shard.key} "
                            f"of {shard.group} ({e}); committed shards are kept: rerun the same "
                            "command to resume"
                        ) from None
                    log.warning(
                        "ray: an actor died on shard %s of %s; retrying it on a new actor", shard.key, shard.group
                    )
                    if actors[i] is actor:  # not yet replaced (it may have had several shards)
                        actors[i] = make()
                    pending.append(shard)
                    submit()
                    continue
                timings.add("read_in_readers", t_read)  # in the actors' reader threads
                timings.add("encode", t_encode)
                self.nodes.add(node)
                submit()
                yield from batches
        finally:
            for ref in running:
                try:
                    ray.cancel(ref, force=True)
                except Exception:
                    pass

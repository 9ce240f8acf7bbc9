"""The one extraction loop: plan -> skip done -> stream batches -> encode -> write -> commit.

Sources are read in DataLoader workers (each opens its files lazily); the encoder runs in
this process; a background thread hands vectors to the sink so writing overlaps compute.
Every shard is committed by the sink as a whole, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm.auto import tqdm

from nenya._errors import InputError, NenyaError
from nenya.encoders.base import Encoder
from nenya.pipeline import faults, interrupt
from nenya.pipeline.items import Batch, Plan, Shard, StageTimings
from nenya.preprocess import decode_on_device
from nenya.sinks import Sink, WriteContext
from nenya.sources import Source

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    """How to run an extraction (not what: that is the source, encoder and sink).

    Attributes:
        batch_size: items per forward pass.
        shard_size: items per unit of commit and resume (rounded up to whole batches).
        num_workers: DataLoader worker processes reading the source (0 reads in this process).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``fp32`` (default, reproducible), ``bf16``, ``fp16`` or ``auto``.
        progress: show a progress bar.
        max_skip_fraction: stop with an error when more than this fraction of items is skipped.
    """

    batch_size: int = 128
    shard_size: int = 4096
    num_workers: int = 1
    device: str = "auto"
    precision: str = "fp32"
    progress: bool = True
    max_skip_fraction: float | None = None
    description: str = "extract"


@dataclass
class RunSummary:
    """What a run did, with per-stage timings in seconds."""

    items: int = 0
    skipped: int = 0
    shards: int = 0
    shards_already_done: int = 0
    seconds: float = 0.0
    timings: StageTimings = field(default_factory=StageTimings)
    outputs: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        stages = ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items())
        resumed = f", {self.shards_already_done} shard(s) already done" if self.shards_already_done else ""
        skipped = f", {self.skipped} skipped" if self.skipped else ""
        return f"{self.items} images in {self.seconds:.1f} s ({self.rate:.1f} images/s){skipped}{resumed}" + (
            f" [{stages}]" if stages else ""
        )


class ShardStream(IterableDataset):
    """Batches of the given shards, read through ``source.read`` with each batch's read time, its
    pixels as a tensor, and errors that name the input and item; with DataLoader workers, worker i
    reads shards i, i+W, ... (Ray actors iterate one shard's stream in a thread)."""

    def __init__(self, source: Source, shards: list[Shard], batch_size: int) -> None:
        self.source, self.shards, self.batch_size = source, shards, batch_size

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        mine = self.shards if info is None else self.shards[info.id :: info.num_workers]
        worker = -1 if info is None else info.id
        for shard in mine:
            done = shard.start
            try:
                batches = iter(self.source.read(shard, self.batch_size))
                while True:
                    t = time.perf_counter()
                    batch = next(batches, None)
                    if batch is None:
                        break
                    batch.timing.read_seconds = time.perf_counter() - t
                    batch.timing.worker = worker
                    faults.point("read.batch")
                    batch.data = torch.from_numpy(np.ascontiguousarray(batch.data))
                    done = int(batch.positions[-1]) + 1 if len(batch) else done
                    yield batch
            except (NenyaError, KeyboardInterrupt):
                raise
            except Exception as e:  # say which input and items, in a form that pickles across processes
                where = f"{shard.group}" + (f" partition {shard.partition!r}" if shard.partition else "")
                raise InputError(
                    f"reading {where}, items from position {done} of shard {shard.key}: {type(e).__name__}: {e}"
                ) from None


_PIDS = re.compile(r"pid(?:\(s\)|s)? ([\d, ]+)")


def _worker_death(err: RuntimeError, it, todo: list[Shard], seen: dict[int, tuple[Shard, int]], workers: int) -> str:
    """Explain a reader process that died (killed, segfault, out of memory): which item it was on."""
    m = _PIDS.search(str(err))
    pids = [int(p) for p in re.findall(r"\d+", m.group(1))] if m else []
    procs = getattr(it, "_workers", []) or []
    lines = []
    for w, proc in enumerate(procs):
        if pids and proc.pid not in pids:
            continue
        mine = todo[w::workers]
        if not mine:
            continue
        if w in seen:
            shard, nxt = seen[w]
            if nxt >= shard.stop:  # finished that shard: it was on the next one
                later = mine[mine.index(shard) + 1 :] if shard in mine else []
                if not later:
                    continue
                shard, nxt = later[0], later[0].start
        else:
            shard, nxt = mine[0], mine[0].start
        where = f"{shard.group}" + (f" partition {shard.partition!r}" if shard.partition else "")
        code = getattr(proc, "exitcode", None)
        how = f"signal {-code}" if isinstance(code, int) and code < 0 else f"exit code {code}"
        lines.append(
            f"reader process {w} (pid {proc.pid}, {how}) died while reading {where}, at or after item "
            f"{nxt} (shard {shard.key}, items {shard.start}-{shard.stop - 1})"
        )
    detail = "; ".join(lines) or str(err).strip()
    return (
        f"{detail}. Committed shards are kept: rerun the same command to resume. If it dies again at the same "
        "item, that input is the likely cause (rerun with --workers 0 to see the error in the main process); "
        "a reader killed by signal 9 often means the machine ran out of memory"
    )


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # readers must not compete with the encoder for cores


class _Writer:
    """A background thread feeding the sink; errors surface in the main thread.

    Its end is its own event, never ``Thread.is_alive()``: on Python 3.11 a ``join()`` interrupted by
    Ctrl-C or SIGTERM marks the still-running thread as stopped (CPython's bpo-45274 handling), and a
    process that then exits kills the writer in the middle of a part, leaving its temporary file."""

    def __init__(self, sink: Sink, depth: int = 8) -> None:
        self.sink = sink
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.busy = 0.0
        self.finished = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="nenya-writer", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        try:
            while True:
                job = self.q.get()
                if job is None:
                    return
                if self.error is not None:
                    continue
                t = time.perf_counter()
                try:
                    batch, vectors = job
                    self.sink.write(batch, vectors)
                    if batch.last:
                        self.sink.commit(batch.shard)
                except BaseException as e:  # reported by put()/close()
                    self.error = e
                self.busy += time.perf_counter() - t
        finally:
            self.finished.set()

    def put(self, batch: Batch, vectors: np.ndarray) -> None:
        if self.error is not None:
            raise self.error
        self.q.put((batch, vectors))

    def close(self) -> None:
        self.q.put(None)
        self.finished.wait()
        if self.error is not None:
            raise self.error

    def stop(self, timeout: float = 60.0) -> None:
        """After an error or a stop: let the writer finish what it was given (a shard it is committing
        is then whole, not a temporary file), for at most ``timeout`` seconds."""
        if self.finished.is_set():
            return
        with contextlib.suppress(queue.Full):
            self.q.put(None, timeout=timeout)
        self.finished.wait(timeout)


def _flag(batch: Batch, bad: torch.Tensor, reason: str) -> None:
    status = list(batch.status or ["ok"] * len(batch))
    for i in torch.nonzero(bad).flatten().tolist():
        if status[i] == "ok":
            status[i] = reason
    batch.status = status


def _check(batch: Batch, x: torch.Tensor) -> torch.Tensor:
    """Flag items with NaN/Inf pixels as skipped and zero them so nothing non-finite is encoded."""
    if not x.is_floating_point():
        return x
    finite = torch.isfinite(x.reshape(len(x), -1)).all(dim=1)
    if bool(finite.all()):
        return x
    _flag(batch, ~finite, "skipped:non-finite values")
    return torch.where(finite.view(-1, *([1] * (x.dim() - 1))), x, torch.zeros((), dtype=x.dtype))


def _pixels(batch: Batch) -> torch.Tensor:
    return batch.data if isinstance(batch.data, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(batch.data))


def _decode_on_device(encoder: Encoder, batch: Batch) -> None:
    if batch.encoded and encoder.preprocess.image is not None:
        decode_on_device(batch, transform=encoder.preprocess.image, device=encoder.device)


def encode_batch(encoder: Encoder, batch: Batch) -> np.ndarray:
    """One batch's vectors as float32 numpy, items with non-finite pixels or latents flagged as skipped.

    Every engine encodes through this function, so they all produce the same vectors."""
    _decode_on_device(encoder, batch)
    x = _check(batch, _pixels(batch))
    vectors = encoder.encode(x)
    finite = torch.isfinite(vectors.reshape(len(vectors), -1)).all(dim=1)
    if not bool(finite.all()):
        _flag(batch, ~finite, "skipped:non-finite latent")
        vectors = torch.nan_to_num(vectors, nan=0.0, posinf=0.0, neginf=0.0)
    return vectors.cpu().numpy()


class Share:
    """Which of the plan's shards this process runs, and how it ends. The default: every shard
    not yet committed, then assemble the outputs. Engines that split a plan between processes
    (torchrun ranks) override both, and say which rank of how many this process is."""

    rank: int = 0
    world: int = 1
    job: str = ""

    def select(self, plan: Plan, todo: list[Shard]) -> list[Shard]:
        """This process's shards, from those not yet committed (``todo``, in plan order)."""
        return todo

    def gather(self, sink: Sink, plan: Plan) -> bool:
        """Called once this process's shards are committed: wait for the shards other processes commit,
        and say whether this process assembles the outputs (it then judges the skips over every item)."""
        return True


def write_context(encoder: Encoder, share: Share | None = None) -> WriteContext:
    """What a sink is told about a run of ``encoder`` (placed on its device): its dimension, tiles,
    description and the fingerprint of what determines its vectors, and ``share``'s rank and world.
    Outputs record this; an existing output is checked against it."""
    share = share or Share()
    # the resolved precision: "auto" may mean bf16 on one machine and fp32 on another
    fingerprint = f"{encoder.fingerprint}|{encoder.preprocess}|{encoder.autocast_dtype or 'fp32'}"
    return WriteContext(
        dim=encoder.dim,
        fingerprint=fingerprint,
        grid=encoder.grid,
        about=encoder.about(),
        rank=share.rank,
        world=share.world,
        job=share.job,
    )


def check_skips(skipped: int, items: int, limit: float | None, *, final: bool, examples: Sequence[str] = ()) -> None:
    """The ``--max-skip-fraction`` rule, one for every engine: more than ``limit`` of ``items`` skipped is
    an error. During a run (``final=False``) it is judged once 100 items are seen, so that a few early
    bad items do not stop a large run; at its end (``final=True``, before any output is assembled) over
    every item of the run, whatever their number. ``examples`` ("id: reason") are named in the error."""
    if limit is None or items == 0 or skipped <= limit * items or (not final and items < 100):
        return
    raise_to = f"{math.ceil(skipped / items * 1000) / 1000:g}"
    seen = f" (for example {'; '.join(examples)})" if examples else ""
    if final:
        raise NenyaError(
            f"{skipped} of {items} items skipped ({skipped / items:.1%}), more than --max-skip-fraction {limit} "
            f"allows{seen}; no output was written. Rerun with a higher limit (--max-skip-fraction {raise_to}) to "
            "write it from the committed shards (they are kept), or fix or remove those inputs and rerun with --overwrite"
        )
    raise NenyaError(
        f"{skipped} of {items} items skipped so far, more than --max-skip-fraction {limit}{seen}: something is "
        f"wrong with the input. Rerun with a higher limit (--max-skip-fraction {raise_to}) to resume from the "
        "committed shards (they are kept), or fix the input and rerun with --overwrite"
    )


@dataclass
class Job:
    """A started run: its plan, this process's shards, and the summary being filled in."""

    plan: Plan
    todo: list[Shard]
    summary: RunSummary
    share: Share
    t_start: float
    timings: StageTimings = field(default_factory=StageTimings)


def start(
    source: Source, encoder: Encoder, sink: Sink, options: RunOptions = RunOptions(), *, share: Share | None = None
) -> Job:
    """Plan, open the sink (which says what is already committed) and choose this process's shards."""
    t_start = time.perf_counter()
    share = share or Share()
    shard_size = max(options.batch_size, -(-options.shard_size // options.batch_size) * options.batch_size)
    plan = source.plan(shard_size)
    done = sink.start(plan, write_context(encoder, share))
    try:
        todo = share.select(plan, [s for s in plan.shards if (s.group, s.key) not in done])
    except BaseException:
        sink.abort()
        raise
    summary = RunSummary(
        shards=len(plan.shards), shards_already_done=sum((s.group, s.key) in done for s in plan.shards)
    )
    if summary.shards_already_done:
        log.info("resuming: %d of %d shards already committed", summary.shards_already_done, len(plan.shards))
    return Job(plan, todo, summary, share, t_start)


def encode_stream(
    source: Source, encoder: Encoder, todo: list[Shard], options: RunOptions, timings: StageTimings
) -> Iterator[tuple[Batch, np.ndarray]]:
    """Read ``todo`` in DataLoader workers and encode in this process: (batch, vectors) pairs."""
    cuda = encoder.device.type == "cuda"
    workers = min(options.num_workers, len(todo)) if todo else 0
    loader = DataLoader(
        ShardStream(source, todo, options.batch_size),
        batch_size=None,
        num_workers=workers,
        pin_memory=cuda,
        worker_init_fn=_worker_init if workers else None,
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )
    seen: dict[int, tuple[Shard, int]] = {}
    it = iter(loader)
    while True:
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            return
        except RuntimeError as e:
            if "DataLoader worker" in str(e):
                raise NenyaError(_worker_death(e, it, todo, seen, workers)) from None
            raise
        t1 = time.perf_counter()
        if len(batch):
            seen[batch.timing.worker] = (batch.shard, int(batch.positions[-1]) + 1)
        if isinstance(batch.data, torch.Tensor) and batch.data.device != encoder.device:
            batch.data = batch.data.to(encoder.device, non_blocking=True)
        t2 = t3 = time.perf_counter()
        if batch.encoded:
            _decode_on_device(encoder, batch)
            t3 = time.perf_counter()
            timings.add("decode_on_device", t3 - t2)
        out = encode_batch(encoder, batch)
        faults.point("encode.batch")
        _add_read_timings(timings, batch, waited=t1 - t0)
        timings.add("transfer", t2 - t1)
        timings.add("encode", time.perf_counter() - t3)
        yield batch, out


def _add_read_timings(timings: StageTimings, batch: Batch, *, waited: float) -> None:
    """A batch's reading: ``waited`` for it here, and its reader's read and decode seconds."""
    timings.add("read", waited)
    timings.add("read_in_readers", batch.timing.read_seconds - batch.timing.decode_seconds)
    if batch.timing.decode_seconds:  # image sources: decoding, resizing and cropping photos
        timings.add("decode_in_readers", batch.timing.decode_seconds)


def drive(
    job: Job, stream: Iterator[tuple[Batch, np.ndarray]], sink: Sink, options: RunOptions = RunOptions()
) -> RunSummary:
    """Write (batch, vectors) pairs through the sink, committing each shard after its last batch,
    then end as the job's share says (assemble by default). ``stream`` may encode here
    (:func:`encode_stream`) or elsewhere (Ray actors): the sink side is the same."""
    summary = job.summary
    writer = _Writer(sink)
    total = sum(len(s) for s in job.todo)
    bar = tqdm(
        total=total,
        unit="img",
        desc=options.description,
        disable=not options.progress or total == 0,
        dynamic_ncols=True,
        smoothing=0.1,
    )
    ok = False
    examples: list[str] = []  # a few skipped items, named if there are too many
    try:
        for batch, out in stream:
            batch.data = None  # the pixels are no longer needed: keep the writer queue light
            writer.put(batch, out)
            summary.items += len(batch)
            if batch.status is not None:
                summary.skipped += _count_skips(batch, examples)
                check_skips(summary.skipped, summary.items, options.max_skip_fraction, final=False, examples=examples)
            bar.update(len(batch))
            interrupt.check()  # a Ctrl-C or SIGTERM swallowed by a finalizer still stops here
        t3 = time.perf_counter()
        writer.close()
        job.timings.write, job.timings.write_wait = writer.busy, time.perf_counter() - t3
        t4 = time.perf_counter()
        if job.share.gather(sink, job.plan):
            # every item of the plan, resumed shards and other ranks' included (this process's own without a count)
            items, skipped = sink.item_counts() or (summary.items, summary.skipped)
            check_skips(skipped, items, options.max_skip_fraction, final=True, examples=examples)
            summary.outputs = sink.finish()
        job.timings.finalize = time.perf_counter() - t4
        summary.timings = job.timings
        ok = True
    finally:
        bar.close()
        close = getattr(stream, "close", None)
        if close is not None:
            close()  # a generator: shut its readers down now, not at garbage collection
        if not ok:
            writer.stop()
            sink.abort()
    summary.seconds = time.perf_counter() - job.t_start
    return summary


def _count_skips(batch: Batch, examples: list[str], keep: int = 3) -> int:
    """The skipped items of ``batch``; the first ``keep`` of the run are added to ``examples``."""
    assert batch.status is not None
    skipped = [(i, s) for i, s in zip(batch.ids, batch.status) if s != "ok"]
    examples += [f"{i}: {s.removeprefix('skipped:')}" for i, s in skipped[: max(0, keep - len(examples))]]
    return len(skipped)


def run(
    source: Source, encoder: Encoder, sink: Sink, options: RunOptions = RunOptions(), *, share: Share | None = None
) -> RunSummary:
    """Extract vectors for everything ``source`` plans, into ``sink``; resumes committed shards.

    The encoder must already sit on its device (``encoder.to(...)``). Returns a summary; the
    sink's outputs are in ``summary.outputs``. ``share`` picks a subset of the shards and how the
    run ends (torchrun ranks); by default this process does everything and assembles the outputs.
    """
    job = start(source, encoder, sink, options, share=share)
    return drive(job, encode_stream(source, encoder, job.todo, options, job.timings), sink, options)


def default_workers(*, images: bool = False) -> int:
    """Reader processes by default: one for HDF5 slabs (cheap to read); for photos, whose decoding
    costs as much as a small model, every core but one (at most 8)."""
    cores = os.cpu_count() or 1
    if cores == 1:
        return 0
    return max(1, min(8, cores - 1)) if images else 1

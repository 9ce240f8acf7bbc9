"""Several processes on one output, no collectives: torchrun ranks and ``nenya extract --devices N``.

Every rank lists the same plan (the listing is deterministic) and takes the shards whose index in
the plan is ``rank`` modulo ``world`` (split on the plan, not on what is left, so ranks that start
at different moments still agree). Each rank commits its parts into the shared work folder (the
file sinks' layout, one lock file per rank: ranks of one job never refuse each other, a second job
is still refused) and then writes a "finished" marker next to it. Rank 0 polls the work folder until
every shard is committed and every rank has said it finished (or a grace period passed), then
assembles and publishes the outputs. A rank that fails or dies leaves its committed shards; rank 0
then stops with a message naming it, and rerunning the same command resumes.

Ranks must share the work folder: one machine, or a shared file system for local output paths.
(For remote outputs the work folder lives in each machine's cache: use one machine, or Ray.)
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import replace

from nenya import ranks as _ranks
from nenya._errors import NenyaError
from nenya.encoders.base import Encoder
from nenya.engines import EngineOptions
from nenya.engines.runner import RunOptions, RunSummary, Share, run
from nenya.pipeline.items import Plan, Shard
from nenya.ranks import Ranks, launch
from nenya.sinks import Sink

log = logging.getLogger(__name__)

__all__ = ["Ranks", "RankEngine", "RankShare", "launch"]

#: seconds rank 0 waits for the other ranks' "finished" markers once every shard is committed
GRACE = 30.0


class RankShare(Share):
    """One rank's share of a plan: every world-th shard; rank 0 waits for the others, judges the
    skipped items over all of them (``--max-skip-fraction``) and assembles."""

    def __init__(self, ranks: Ranks, sink, *, timeout: float = 1800.0, poll: float = 0.5) -> None:
        self.ranks, self.sink, self.timeout, self.poll = ranks, sink, timeout, poll
        self.rank, self.world, self.job = ranks.rank, ranks.world, ranks.token
        self.plan: Plan | None = None
        self.mine: list[Shard] = []

    # -- markers: notes each rank leaves through the sink ----------------------------------
    def _write_markers(self, ok: bool, error: str = "") -> None:
        if self.plan is None:
            return
        body = {
            "rank": self.ranks.rank,
            "world": self.ranks.world,
            "token": self.ranks.token,
            "ok": ok,
            "error": error,
            "shards": len(self.mine),
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "time": time.time(),
        }
        for g in self.plan.groups:
            try:
                self.sink.post(g, f"rank{self.ranks.rank}", body)
            except OSError as e:  # never hide the run's own outcome behind a marker problem
                log.warning("rank %d: cannot leave its marker for %s: %s", self.ranks.rank, g.key, e)

    def _read_marker(self, group_key: str, rank: int) -> dict | None:
        assert self.plan is not None
        m = self.sink.read_post(self.plan.group(group_key), f"rank{rank}")
        if m is None:
            return None
        if self.ranks.token:
            return m if m.get("token") == self.ranks.token else None
        return m if m.get("time", 0) >= _ranks.PROCESS_T0 - 1 else None  # without a job id: this run's only

    # -- Share --------------------------------------------------------------------------
    def select(self, plan: Plan, todo: list[Shard]) -> list[Shard]:
        self.plan = plan
        for g in plan.groups:  # a previous run's marker must not speak for this one
            self.sink.remove_post(g, f"rank{self.ranks.rank}")
        index = {(s.group, s.key): i for i, s in enumerate(plan.shards)}
        r, w = self.ranks.rank, self.ranks.world
        self.mine = [s for s in todo if index[(s.group, s.key)] % w == r]
        log.info(
            "rank %d of %d: %d of %d shards to encode (%d already committed)",
            r,
            w,
            len(self.mine),
            len(plan.shards),
            len(plan.shards) - len(todo),
        )
        return self.mine

    def gather(self, sink: Sink, plan: Plan) -> bool:
        if self.ranks.rank != 0:
            sink.abort()  # nothing is uncommitted: this releases this rank's locks
            self._write_markers(True)
            return False
        self._wait()
        for g in plan.groups:
            for r in range(1, self.ranks.world):
                sink.remove_post(g, f"rank{r}")
        return True  # rank 0 judges every rank's items together, then assembles

    def failed(self, error: BaseException) -> None:
        """Tell rank 0 this rank stopped (called by the engine on any error or interruption)."""
        what = "interrupted" if isinstance(error, KeyboardInterrupt) else f"{type(error).__name__}: {error}"
        self._write_markers(False, what)

    # -- rank 0 -------------------------------------------------------------------------
    def _dead(self, rank: int) -> str | None:
        """How a rank ended, when the holder of its lock is this job's rank, on this machine, and gone."""
        assert self.plan is not None
        for g in self.plan.groups:
            holder = self.sink.lock_holder(g, rank)
            if holder is not None and self._this_jobs(holder) and holder.dead_here():
                return f"rank {rank} (pid {holder.pid}) died"
        return None

    def _this_jobs(self, holder) -> bool:
        """Whether a lock was taken by a rank of this job (not one left by an earlier, killed run)."""
        if self.ranks.token or holder.job:  # a job id (--devices, torchrun --rdzv-id) settles it
            return holder.job == self.ranks.token
        # no id on either side: ranks of one launch share a parent, and took their locks after it started
        if holder.ppid and holder.ppid != os.getppid():
            return False
        return holder.since >= _ranks.PROCESS_T0 - 1

    def _wait(self) -> None:
        assert self.plan is not None
        w = self.ranks.world
        owner = {(s.group, s.key): i % w for i, s in enumerate(self.plan.shards)}
        first = self.plan.groups[0].key
        t0 = last_change = time.monotonic()
        all_committed_at: float | None = None
        last_n, last_log, poll = -1, t0, self.poll
        while True:
            committed = self.sink.committed()
            missing = [k for k in owner if k not in committed]
            finished = {r: m for r in range(1, w) if (m := self._read_marker(first, r)) is not None}
            now = time.monotonic()
            if not missing:
                if len(finished) == w - 1:
                    return
                all_committed_at = all_committed_at or now
                if now - all_committed_at > GRACE:
                    log.warning(
                        "every shard is committed but rank(s) %s did not say they finished within %.0f s; "
                        "assembling anyway",
                        sorted(set(range(1, w)) - set(finished)),
                        GRACE,
                    )
                    return
            else:
                waiting = sorted({owner[k] for k in missing})
                problems = []
                for r in waiting:
                    m = finished.get(r)
                    if r == 0:
                        problems.append("rank 0's own shards are not all committed")
                    elif m is not None and not m.get("ok"):
                        problems.append(f"rank {r} stopped: {m.get('error')}")
                    elif m is not None:
                        problems.append(
                            f"rank {r} finished without committing its shards (did it list the "
                            "same inputs? every rank must run the same command)"
                        )
                    elif (dead := self._dead(r)) is not None:
                        # it may have committed its last shard, said so and exited since `committed`
                        # and the markers were read: a rank that finished leaves its marker before it exits
                        late = self._read_marker(first, r)
                        if late is None:
                            problems.append(dead)
                        elif not late.get("ok"):
                            problems.append(f"rank {r} stopped: {late.get('error')}")
                if problems:
                    raise NenyaError(
                        f"{len(missing)} shard(s) will not be committed in this run: "
                        f"{'; '.join(problems)}. Committed shards are kept: rerun the same command "
                        "to resume"
                    )
                if len(committed) != last_n:
                    last_n, last_change = len(committed), now
                elif now - last_change > self.timeout:
                    raise NenyaError(
                        f"rank 0 waited {self.timeout:.0f} s without a new shard being committed; {len(missing)} "
                        f"shard(s) of rank(s) {', '.join(map(str, waiting))} are missing. Is every rank running "
                        f"the same command with WORLD_SIZE={w}? Committed shards are kept: rerun to resume "
                        "(--rank-timeout sets this limit)"
                    )
                if now - last_log > 60:
                    log.info("rank 0: waiting for %d shard(s) of rank(s) %s", len(missing), waiting)
                    last_log = now
            time.sleep(poll)
            poll = min(2.0, poll * 1.25)


class RankEngine:
    """This process as one rank of a job (see the module docstring)."""

    decodes_on_device = True

    def __init__(self, ranks: Ranks, *, timeout: float = 1800.0) -> None:
        self.ranks, self.timeout = ranks, timeout
        self.label = f"rank {ranks.rank} of {ranks.world}: "

    @classmethod
    def from_options(cls, options: EngineOptions) -> RankEngine:
        if options.ranks is None:
            raise NenyaError("the torchrun engine needs RANK and WORLD_SIZE in the environment (torchrun or --devices)")
        return cls(options.ranks, timeout=options.rank_timeout)

    def prepare(self, encoder: Encoder, options: RunOptions, *, compile: bool = False) -> RunOptions:
        """This rank's device (``cuda:LOCAL_RANK``; on a CPU, its share of the cores)."""
        import torch

        device = self.ranks.device(options.device)
        if not device.startswith("cuda"):
            torch.set_num_threads(self.ranks.cpu_threads())
        encoder.to(device, options.precision, compile=compile)
        return replace(options, device=device, description=f"rank {self.ranks.rank}")

    def describe(self, encoder: Encoder) -> str:
        return str(encoder.device)

    def run(self, source, encoder: Encoder, sink: Sink, options: RunOptions) -> RunSummary:
        if not sink.supports_ranks:
            raise NenyaError(
                f"several ranks need a file sink that commits parts (h5, parquet, npy), not {type(sink).__name__}"
            )
        share = RankShare(self.ranks, sink, timeout=self.timeout)
        try:
            return run(source, encoder, sink, options, share=share)
        except BaseException as e:
            share.failed(e)
            raise

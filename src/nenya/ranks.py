"""One rank parser: where this process stands in a multi-process job (torchrun's environment),
for extraction and training alike, and the ``--devices N`` launcher (kept free of torch imports,
so the launching process stays light)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass

from nenya._errors import NenyaError

log = logging.getLogger("nenya.engines.torchrun")

#: when this process started (near enough: the CLI imports this module first). Lock files and markers
#: older than this belong to an earlier run: all ranks of a job start together.
PROCESS_T0 = time.time()


@dataclass(frozen=True)
class Ranks:
    """Where this process stands in a multi-process job (from torchrun's environment variables).

    ``token`` identifies the job (``NENYA_JOB_ID``, set by ``--devices``, or torchrun's
    ``TORCHELASTIC_RUN_ID``); markers of another job are ignored.
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    token: str = ""

    @classmethod
    def from_env(cls, environ=None) -> Ranks | None:
        """The ranks of ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``LOCAL_WORLD_SIZE``; None when unset."""
        env = os.environ if environ is None else environ
        if "WORLD_SIZE" not in env and "RANK" not in env:
            return None
        try:
            world = int(env.get("WORLD_SIZE", "1"))
            rank = int(env.get("RANK", "0"))
            local_rank = int(env.get("LOCAL_RANK", str(rank)))
            local_world = int(env.get("LOCAL_WORLD_SIZE", str(world)))
        except ValueError:
            raise NenyaError(
                "RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE must be integers; got "
                f"{env.get('RANK')!r}, {env.get('WORLD_SIZE')!r}, {env.get('LOCAL_RANK')!r}, "
                f"{env.get('LOCAL_WORLD_SIZE')!r}"
            ) from None
        if world < 1 or not 0 <= rank < world:
            raise NenyaError(f"RANK={rank} is not within WORLD_SIZE={world}; launch with torchrun or --devices N")
        run_id = env.get("TORCHELASTIC_RUN_ID", "")
        token = env.get("NENYA_JOB_ID") or (run_id if run_id not in ("", "none") else "")
        return cls(rank, world, local_rank, max(1, local_world), token)

    @classmethod
    def current(cls, environ=None) -> Ranks:
        """:meth:`from_env`, or one process (rank 0 of 1) when the variables are unset."""
        return cls.from_env(environ) or cls()

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, saves and assembles."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def device(self, device: str = "auto") -> str:
        """``cuda:LOCAL_RANK`` for ``auto``/``cuda`` on a GPU machine; otherwise ``device`` unchanged."""
        import torch

        if device in ("auto", "cuda") and torch.cuda.is_available():
            n = torch.cuda.device_count()
            if self.local_rank >= n:
                raise NenyaError(
                    f"LOCAL_RANK {self.local_rank} but this machine has {n} GPU(s); start at most "
                    f"{n} processes per machine (--nproc-per-node / --devices)"
                )
            return f"cuda:{self.local_rank}"
        return device

    def cpu_threads(self) -> int:
        """Threads per rank when ranks share the CPU: the cores split evenly, at least one."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, cores // self.local_world)


def launch(argv: list[str], n: int, *, env: dict[str, str] | None = None) -> int:
    """Run ``nenya <argv>`` as ``n`` local ranks (``--devices N``); return the first failing exit code.

    When a rank fails the others are stopped like Ctrl-C (committed shards are kept); Ctrl-C here
    stops them all.
    """
    base = dict(os.environ if env is None else env)
    base.update(WORLD_SIZE=str(n), LOCAL_WORLD_SIZE=str(n), NENYA_JOB_ID=uuid.uuid4().hex, MASTER_ADDR="127.0.0.1")
    procs = []
    for r in range(n):
        e = dict(base, RANK=str(r), LOCAL_RANK=str(r))
        procs.append(subprocess.Popen([sys.executable, "-m", "nenya", *argv], env=e))
    rc = 0

    def stop(sig) -> None:
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(sig)

    try:
        while any(p.poll() is None for p in procs):
            for p in procs:
                code = p.poll()
                if code is not None and code != 0 and rc == 0:
                    rc = code if code > 0 else 128 - code
                    log.warning("rank %d exited with code %s; stopping the other ranks", procs.index(p), code)
                    stop(signal.SIGTERM)
            time.sleep(0.2)
    except KeyboardInterrupt:
        # Ctrl-C in a terminal reached the ranks too: give them a moment to stop on their own (a second
        # signal would interrupt their cleanup), then stop the rest (SIGTERM sent to this process only)
        deadline = time.monotonic() + 10
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.2)
        stop(signal.SIGTERM)
        rc = 130
    finally:
        deadline = time.monotonic() + 60
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    for p in procs:
        if rc == 0 and p.returncode != 0:
            rc = p.returncode if p.returncode > 0 else 128 - p.returncode
    return rc

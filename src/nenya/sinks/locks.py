"""Output locks: one run (or one rank of a multi-process job) writes an output at a time.

A lock is an ``flock`` on a file next to an output's parts (released by the kernel when the process
dies); whoever takes it writes who they are into it (:class:`LockHolder`, JSON), so a second run
can say who holds it and rank 0 of a job can tell a dead rank from a live one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from dataclasses import dataclass
from typing import IO

from nenya._errors import OutputError


@dataclass(frozen=True)
class LockHolder:
    """Who holds an output's lock: written into the lock file as JSON when it is taken."""

    pid: int
    host: str
    since: float
    job: str = ""  # the job of the rank that took it ("" for a single process, or an older nenya)
    ppid: int = 0  # its parent (ranks of one launch share it; 0 from an older nenya)

    @classmethod
    def parse(cls, text: str) -> LockHolder | None:
        try:
            d = json.loads(text)
            return cls(int(d["pid"]), str(d["host"]), float(d["since"]), str(d.get("job", "")), int(d.get("ppid", 0)))
        except (ValueError, KeyError, TypeError):
            return None

    def dead_here(self) -> bool:
        """Whether the holder was a process of this machine that no longer runs."""
        return self.host == os.uname().nodename and not alive(self.pid)


def alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child not yet reaped by its parent is a zombie: dead for us
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def take(path: str, job: str = "") -> IO[str] | None:
    """An exclusive, non-blocking lock on ``path`` (None where flock is unavailable), with this
    process written into it; an OutputError naming the holder when another process has it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return None
    fh = open(path, "a+")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        holder = LockHolder.parse(fh.read())
        fh.close()
        who = f"pid {holder.pid} on {holder.host}" if holder else "another process"
        raise OutputError(
            f"another nenya run ({who}) is writing the same output (lock {path}); wait for it to "
            "finish or stop it, then rerun: two runs never write one output together"
        ) from None
    fh.seek(0)
    fh.truncate()
    holder = LockHolder(os.getpid(), os.uname().nodename, time.time(), job, os.getppid())
    fh.write(json.dumps(dataclasses.asdict(holder)))
    fh.flush()
    return fh


def held(path: str) -> bool:
    """Whether another process holds the lock ``path`` (tried without waiting, released at once)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return False
    try:
        fh = open(path)
    except OSError:
        return False
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        fh.close()  # closing releases a lock taken here
    return False


def read_holder(path: str) -> LockHolder | None:
    """Who wrote the lock file ``path`` (None: no such file, or not readable as a holder)."""
    try:
        with open(path) as f:
            return LockHolder.parse(f.read())
    except OSError:
        return None


def rank_lock_name(gdir: str, rank: int) -> str:
    """The lock file of one rank of a multi-process job: rank 0 (and a single-process run) takes
    ``<group>.lock``; rank r > 0 ``<group>.rank<r>.lock``. A second job collides on the same names."""
    return gdir + (".lock" if rank == 0 else f".rank{rank}.lock")


def lock_group(gdir: str, rank: int, world: int, job: str, locks: list[tuple[str, IO[str]]]) -> None:
    """Take rank ``rank``'s lock on the output whose parts are in ``gdir`` (added to ``locks``). A
    single process (``world`` 1) is also refused while a rank of a multi-process job holds one of
    its ``<group>.rank<r>.lock`` files; every lock in ``locks`` is released then."""
    path = rank_lock_name(gdir, rank)
    fh = take(path, job)
    if fh is not None:
        locks.append((path, fh))
    if world == 1:  # a job of several ranks holds <group>.rank<r>.lock files too
        import glob

        for other in glob.glob(glob.escape(gdir) + ".rank*.lock"):
            if held(other):
                release(locks)
                raise OutputError(
                    f"a multi-process nenya run is writing the same output (lock {other}); "
                    "wait for it to finish or stop it, then rerun"
                )


def release(locks: list[tuple[str, IO[str]]]) -> None:
    """Remove and release every lock in ``locks`` (emptied)."""
    for path, fh in locks:
        with contextlib.suppress(OSError):
            os.remove(path)  # while still holding it: a waiting run then takes a fresh file
        fh.close()
    locks.clear()

"""Named fault points for fault-injection tests: ``NENYA_FAULTS="name[@n]=action,..."``.

A fault point is a line in the pipeline where a test can make the process die or fail on its
``n``-th passage (default the first, counted since the spec last changed): ``kill`` (SIGKILL itself: nothing below runs, no cleanup),
``raise`` (a RuntimeError), ``enospc`` (an OSError "No space left on device") or ``interrupt``
(KeyboardInterrupt, as Ctrl-C). Counts are per process. With ``NENYA_FAULTS`` unset a point
costs one dictionary lookup.

Points: ``read.batch`` (a reader yields a batch), ``encode.batch`` (a batch was encoded),
``part.write`` (a shard's part is written but not yet renamed), ``part.renamed`` (part in place,
no done marker yet), ``marker.written`` (a shard is committed), ``assemble.write`` (the final file
is half assembled), ``publish.before`` / ``publish.after`` (around moving the final file in place).
"""

from __future__ import annotations

import errno
import os
import signal

ENV = "NENYA_FAULTS"
POINTS = (
    "read.batch",
    "encode.batch",
    "part.write",
    "part.renamed",
    "marker.written",
    "assemble.write",
    "publish.before",
    "publish.after",
)
ACTIONS = ("kill", "raise", "enospc", "interrupt")

_cache: tuple[str, dict[str, tuple[int, str]]] | None = None
_hits: dict[str, int] = {}


def _spec() -> dict[str, tuple[int, str]]:
    global _cache
    raw = os.environ.get(ENV, "")
    if _cache is not None and _cache[0] == raw:
        return _cache[1]
    spec: dict[str, tuple[int, str]] = {}
    for item in filter(None, (s.strip() for s in raw.split(","))):
        target, _, action = item.partition("=")
        name, _, nth = target.partition("@")
        if name not in POINTS or (action or "kill") not in ACTIONS:
            raise ValueError(f"{ENV}: bad fault {item!r}; points: {', '.join(POINTS)}; actions: {', '.join(ACTIONS)}")
        spec[name] = (int(nth or 1), action or "kill")
    _cache = (raw, spec)
    _hits.clear()  # a new spec counts passages afresh (tests arm one fault after another in one process)
    return spec


def point(name: str) -> None:
    """Pass fault point ``name``: act if a test armed it for this passage."""
    spec = _spec()
    if name not in spec:
        return
    _hits[name] = _hits.get(name, 0) + 1
    nth, action = spec[name]
    if _hits[name] != nth:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "interrupt":
        raise KeyboardInterrupt
    if action == "enospc":
        raise OSError(errno.ENOSPC, f"No space left on device (injected at {name})")
    raise RuntimeError(f"injected fault at {name}")

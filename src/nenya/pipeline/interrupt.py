"""Ctrl-C and SIGTERM that are never lost.

Python's default SIGINT handler raises KeyboardInterrupt wherever the main thread happens to be. When
that is inside a finalizer or a weakref callback (the import system's module locks use one; a busy,
freshly installed environment imports and collects a lot), Python prints "Exception ignored in ..."
and goes on: the stop is lost and the run carries on, or a server never stops. The handler here
records the request as well, and long loops call :func:`check` between steps, so that a swallowed
KeyboardInterrupt is raised again where it is safe.
"""

from __future__ import annotations

import signal
import threading

__all__ = ["install", "check", "requested", "reset"]

_requested = threading.Event()  # process-wide by nature: signals are


def _handler(signum: int, frame: object) -> None:
    _requested.set()
    raise KeyboardInterrupt


def install() -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt and are remembered (main thread only; else a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        return
    reset()
    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)


def requested() -> bool:
    """Whether a stop was asked for since :func:`install` (or :func:`reset`)."""
    return _requested.is_set()


def check() -> None:
    """Raise KeyboardInterrupt if a stop was asked for (its first KeyboardInterrupt may have been
    swallowed by a finalizer); a no-op otherwise."""
    if _requested.is_set():
        raise KeyboardInterrupt


def reset() -> None:
    _requested.clear()

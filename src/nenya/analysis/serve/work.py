"""The server's worker threads: heavy work (thumbnail reads, uploaded queries, exports) runs here, off
the event loop, a bounded number at a time, so that one user's export never stalls another's page.

Why not ``concurrent.futures.ThreadPoolExecutor``: its threads are joined when the interpreter exits,
so a thread still busy (a model still loading, a large export half written) kept a stopped server
alive; ours are daemon threads that :meth:`WorkPool.close` waits for only up to a deadline. And a
full pool answers at once (:class:`Busy`) instead of queueing without bound.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["WorkPool", "Busy"]


class Busy(RuntimeError):
    """Every worker is busy and the waiting line is full: try again in a moment (HTTP 503)."""


class WorkPool(Executor):
    """``workers`` daemon threads and a waiting line of at most ``backlog`` tasks.

    ``submit`` raises :class:`Busy` when the line is full and ``RuntimeError`` once shut down; it is
    an :class:`~concurrent.futures.Executor`, so ``loop.run_in_executor(pool, fn, ...)`` works.
    """

    def __init__(self, workers: int, *, backlog: int, name: str = "nenya-work") -> None:
        if workers < 1 or backlog < 0:
            raise ValueError(f"a WorkPool needs workers >= 1 and backlog >= 0; got {workers}, {backlog}")
        self.workers, self.backlog, self.name = workers, backlog, name
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._waiting: list[Future] = []  # submitted, not yet started (cancelled at shutdown)
        self._running = 0
        self._closed = False

    @property
    def load(self) -> int:
        """Tasks running or waiting now."""
        with self._lock:
            return self._running + len(self._waiting)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the server is stopping")
            if self._running + len(self._waiting) >= self.workers + self.backlog:
                raise Busy(f"the server is busy ({self._running} tasks running, {len(self._waiting)} waiting); retry")
            self._waiting.append(future)
            if len(self._threads) < self.workers and len(self._threads) < self._running + len(self._waiting):
                t = threading.Thread(target=self._work, name=f"{self.name}-{len(self._threads)}", daemon=True)
                self._threads.append(t)
                t.start()
        self._tasks.put((future, fn, args, kwargs))
        return future

    def _work(self) -> None:
        while True:
            item = self._tasks.get()
            if item is None:
                return
            future, fn, args, kwargs = item
            with self._lock:
                if future in self._waiting:
                    self._waiting.remove(future)
                self._running += 1
            try:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn(*args, **kwargs))
                    except BaseException as e:  # handed to whoever awaits the future
                        future.set_exception(e)
            finally:
                with self._lock:
                    self._running -= 1

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.close(wait, cancel_futures=cancel_futures)

    def close(self, wait: bool = True, *, cancel_futures: bool = True, timeout: float | None = None) -> bool:
        """Refuse new work, cancel what has not started, and wait (at most ``timeout`` seconds when
        ``wait``) for what runs; True when every worker has finished."""
        with self._lock:
            self._closed = True
            waiting, self._waiting = (self._waiting, []) if cancel_futures else ([], self._waiting)
            threads = list(self._threads)
        for f in waiting:
            f.cancel()
        for _ in threads:
            self._tasks.put(None)
        if not wait:
            return all(not t.is_alive() for t in threads)
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        busy = [t.name for t in threads if t.is_alive()]
        if busy:
            log.warning("still busy after %.0f s, left behind: %s", timeout or 0, ", ".join(busy))
        return not busy

"""The runner's writer thread and a stop: a shard being committed is finished, never cut in half."""

from __future__ import annotations

import os
import signal
import threading
from types import SimpleNamespace

import pytest

from nenya.engines.runner import _Writer
from nenya.pipeline import interrupt


class SlowSink:
    """A sink whose commit takes a while (a large part being written)."""

    def __init__(self) -> None:
        self.started, self.release, self.committed = threading.Event(), threading.Event(), []

    def write(self, batch, vectors) -> None:
        pass

    def commit(self, shard) -> None:
        self.started.set()
        self.release.wait(10)
        self.committed.append(shard)


def test_a_stop_while_the_writer_commits_waits_for_the_commit():
    """Ctrl-C or SIGTERM while the main thread waits for the writer's last commit: on Python 3.11 an
    interrupted Thread.join() marks the running thread as stopped, so the runner once skipped waiting
    and the process exited in the middle of a part (CI saw its temporary file left behind)."""
    sink = SlowSink()
    w = _Writer(sink)
    w.put(SimpleNamespace(last=True, shard="s0"), None)
    assert sink.started.wait(10)
    # Python's own Ctrl-C handler for this test (an earlier in-process CLI run may have installed
    # nenya's, which would remember the stop for later tests), restored after
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()  # the stop, in the main thread
        threading.Timer(0.6, sink.release.set).start()  # the part is written a moment later
        with pytest.raises(KeyboardInterrupt):
            w.close()
    finally:
        signal.signal(signal.SIGINT, before)
        interrupt.reset()
    assert sink.committed == []  # still writing when the stop arrived
    w.stop(timeout=10)
    assert sink.committed == ["s0"] and w.finished.is_set()  # stop() waited for the whole part


def test_stop_returns_at_once_when_the_writer_has_ended():
    w = _Writer(SlowSink())
    w.close()
    w.stop(timeout=10)
    assert w.finished.is_set()

"""A Ctrl-C that lands inside a finalizer is swallowed by Python ("Exception ignored in ..."): the
stop is remembered and raised again where it is safe."""

from __future__ import annotations

import signal
import weakref

import pytest

from nenya.pipeline import interrupt


class _Thing:
    pass


def _drop_with_a_signal_in_its_callback() -> None:
    thing = _Thing()
    ref = weakref.ref(thing, lambda _: signal.raise_signal(signal.SIGINT) or sum(range(100)))
    del thing  # the callback runs here; the KeyboardInterrupt raised inside it is printed, not raised
    assert ref() is None


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowed one, on purpose
def test_a_stop_swallowed_by_a_finalizer_is_raised_again():
    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _drop_with_a_signal_in_its_callback()  # Python's own handler: the stop is simply lost
        interrupt.install()
        assert not interrupt.requested()
        _drop_with_a_signal_in_its_callback()
        assert interrupt.requested()
        with pytest.raises(KeyboardInterrupt):
            interrupt.check()
        interrupt.reset()
        interrupt.check()  # nothing asked for: a no-op
    finally:
        interrupt.reset()
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])

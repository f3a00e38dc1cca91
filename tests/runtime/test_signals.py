"""Stop signals: the training loop's flag (:class:`StopSignals`) inside a stop-at-once scope (:func:`stop_at_once`),
as a run holds its directory. A signal outside the loop unwinds every ``with`` at once; inside it, only a flag."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from diffusion.runtime.signals import Interrupted, StopSignals, stop_at_once


def send(sig: signal.Signals) -> None:
    assert threading.current_thread() is threading.main_thread(), "signals reach Python's main thread only"
    os.kill(os.getpid(), sig)
    time.sleep(1.0)  # the handler runs here, between bytecodes


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_stop_at_once_raises_with_the_signals_status_and_unwinds_every_with(sig, code):
    before = signal.getsignal(sig)
    closed = []
    with pytest.raises(Interrupted) as stop:
        with stop_at_once("in the teardown; everything is kept"):
            try:
                send(sig)
            finally:
                closed.append("lock")
            closed.append("after the signal")  # never reached
    assert stop.value.exit_code == code
    assert str(stop.value) == f"stopped by {sig.name} in the teardown; everything is kept"
    assert closed == ["lock"]
    assert signal.getsignal(sig) is before


def test_the_loops_flag_takes_over_inside_and_stop_at_once_returns_after_it():
    with stop_at_once("outside the loop"):
        with StopSignals() as loop:
            send(signal.SIGTERM)  # inside the loop: noted, nothing raised (the loop saves, then raises itself)
            assert loop.received == signal.SIGTERM
        with pytest.raises(Interrupted, match="^stopped by SIGTERM outside the loop$"):
            send(signal.SIGTERM)

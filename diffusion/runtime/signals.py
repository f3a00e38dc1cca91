"""Stop requests from the outside (SIGTERM from a scheduler, Ctrl-C) turned into a flag a loop checks.

A long loop should not die mid-write: it saves what it must at the next step and raises :class:`Interrupted`
with exit status 128 + signal number.
"""

from __future__ import annotations

import signal
from types import TracebackType
from typing import Any

EXIT_ON_SIGNAL = {signal.SIGTERM: 143, signal.SIGINT: 130}  # 128 + signal number, the shell convention


class Interrupted(Exception):
    """SIGTERM/SIGINT arrived and the work stopped cleanly. ``exit_code`` follows the 128 + signal convention."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Pruned(Exception):
    """A hyperparameter search stopped this run early (its checkpoints are kept); see
    :class:`diffusion.sweeps.pruning.TrialPruned`. Defined here so that catching it needs no optional package."""


class StopSignals:
    """While entered, SIGTERM and SIGINT set :attr:`received` instead of ending the process; with ``at_once`` (the
    rest of the message, see :meth:`interrupted`) they also raise :class:`Interrupted` at once (:func:`stop_at_once`).
    Outside the main thread signals are left alone; earlier handlers are put back on exit.
    """

    def __init__(self, at_once: str | None = None) -> None:
        self.received: int | None = None
        self._at_once = at_once
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        def handle(signum: int, frame: Any) -> None:
            self.received = signum
            if self._at_once is not None:
                raise self.interrupted(self._at_once)

        try:
            for sig in EXIT_ON_SIGNAL:
                self._previous[sig] = signal.signal(sig, handle)
        except ValueError:  # not the main thread
            pass
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def interrupted(self, where_and_what_was_kept: str) -> Interrupted:
        """The exception to raise for the received signal: ``stopped by SIGTERM <where; what was kept, how to
        continue>``."""
        stop = signal.Signals(self.received or signal.SIGTERM)
        return Interrupted(f"stopped by {stop.name} {where_and_what_was_kept}", EXIT_ON_SIGNAL.get(stop, 143))


def stop_at_once(where_and_what_was_kept: str) -> StopSignals:
    """While entered, SIGTERM and SIGINT raise :class:`Interrupted` at once, wherever the main thread is, so the
    enclosing ``with`` blocks still run: a log is closed, a run lock released. For work with nothing to save
    (sampling), and around the setup and teardown of work that saves through a plain :class:`StopSignals`, which
    takes over while entered inside. The message is ``stopped by SIGTERM <where_and_what_was_kept>``.
    """
    return StopSignals(at_once=where_and_what_was_kept)

"""How a task's failures end the process: the one map from exception to exit status.

A stop signal exits with the signal's status (its message says what was kept and how to continue); a failed
write or a diverging loss exits 1 with ``error: <one line>``. User errors (exit 2) are the app's: they are
refused before a task writes anything.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from diffusion.runtime.signals import Interrupted, stop_at_once
from diffusion.storage.atomic import SaveError
from diffusion.storage.run_lock import RunLock
from diffusion.training.trainer import TrainingDiverged

EXIT_FAILURE = 1


@contextmanager
def exit_on_failure() -> Iterator[None]:
    """Around a task's work: :class:`Interrupted` -> its exit code; a failed save or a diverged loss -> exit 1."""
    try:
        yield
    except Interrupted as stop:
        print(stop, file=sys.stderr)
        sys.exit(stop.exit_code)
    except (TrainingDiverged, SaveError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_FAILURE)


@contextmanager
def holding_run(run_dir: Path, rank: int | None, stopped: str) -> Iterator[None]:
    """The run directory locked for this process (:class:`RunLock`; rank 0 only) while the work inside writes it.

    A stop signal at any moment in between ends the work at once through every ``with`` inside (a log closed, the
    lock released) with the signal's exit status and ``stopped by SIGTERM <stopped>``; a training loop inside
    saves first (its :class:`~diffusion.runtime.signals.StopSignals` take over while it runs). Without this, a
    SIGTERM in the setup or teardown around the loop (torchrun stopping the ranks that survive a failed one)
    ended the process at once and left the lock to be taken over as stale.
    """
    with exit_on_failure(), stop_at_once(stopped), RunLock(run_dir, rank=rank):
        yield


def stopped_outside_the_loop(run_dir: Path) -> str:
    """:func:`holding_run`'s message for a training run stopped in its setup or teardown."""
    return (f"outside the training loop; what {run_dir} holds is kept: to continue, run the same command with "
            f"resume=auto (same hydra.run.dir) or resume={run_dir}")

"""How a task's failures end the process: the one map from exception to exit status.

A stop signal exits with the signal's status (its message says what was kept and how to continue); a failed
write or a diverging loss exits 1 with ``error: <one line>``. User errors (exit 2) are the app's: they are
refused before a task writes anything.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from diffusion.runtime.signals import Interrupted
from diffusion.storage.atomic import SaveError
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

"""User mistakes become one line on stderr and exit status 2; bugs keep their traceback."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from omegaconf.errors import InterpolationKeyError, MissingMandatoryValue

from diffusion.validation import ConfigError

EXIT_USER_ERROR = 2
DEBUG_ENV = "DIFFUSION_DEBUG"  # set to 1 for the full traceback of a user error


@contextmanager
def guard_user_errors(created_dir: Path | None = None) -> Iterator[None]:
    """Turn a :class:`ConfigError` (also when Hydra's instantiate wraps it) or a missing/unknown config value
    into ``error: <one line>`` and exit 2. ``created_dir``, the run directory Hydra made for this job, is
    removed again if nothing was written into it."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 - re-raised unless it is a user error
        message = user_error_message(error)
        if message is None or os.environ.get(DEBUG_ENV) == "1":
            raise
        if created_dir is not None and created_dir.is_dir() and not any(created_dir.iterdir()):
            created_dir.rmdir()
        print(f"error: {message}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def user_error_message(error: BaseException) -> str | None:
    """The one-line message of a user error found in ``error``'s cause chain, else None."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ConfigError):
            return str(seen).splitlines()[0]
        if isinstance(seen, MissingMandatoryValue):
            key = getattr(seen, "full_key", "") or "a key"
            return f"{key} is required: set {key}=... on the command line"
        if isinstance(seen, InterpolationKeyError):
            key = getattr(seen, "full_key", "") or "a key"
            return f"{key} refers to a key the chosen options do not define ({str(seen).splitlines()[0]})"
        seen = seen.__cause__ or seen.__context__
    return None

"""User mistakes become one line on stderr and exit status 2; bugs keep their traceback.
:func:`guard_user_errors` wraps the task; :func:`guard_command_line` wraps the Hydra entry point (what Hydra
reports before the task starts).
"""

from __future__ import annotations

import difflib
import errno
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, InterpolationKeyError, MissingMandatoryValue

from diffusion.runtime.checks import EXIT_USER_ERROR, ConfigError
from diffusion.storage.legacy import MOVED_KEYS
from diffusion.tasks.ode_scores import ODE_SCORE_KEYS
from diffusion.tasks.run_files import remove_if_empty

DEBUG_ENV = "DIFFUSION_DEBUG"  # set to 1 for the full traceback of a user error (HYDRA_FULL_ERROR=1 too)
HYDRA_FULL_ERROR = "HYDRA_FULL_ERROR"
_UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST)
_guarding = False  # guard_command_line is active


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
        if created_dir is not None:
            remove_if_empty(created_dir)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


@contextmanager
def guard_command_line() -> Iterator[None]:
    """Around the Hydra-decorated entry point: Hydra prints its own errors over several lines and exits 1,
    unless ``HYDRA_FULL_ERROR=1``, which lets them through to here to become one line and exit 2 like any user
    error. A user who sets ``HYDRA_FULL_ERROR=1`` (or ``DIFFUSION_DEBUG=1``) still gets full tracebacks."""
    global _guarding
    if _guarding:  # nested: the outer guard already read the user's settings
        yield
        return
    saved = {name: os.environ.get(name) for name in (HYDRA_FULL_ERROR, DEBUG_ENV)}
    if saved[HYDRA_FULL_ERROR] == "1":
        os.environ[DEBUG_ENV] = "1"
    os.environ[HYDRA_FULL_ERROR] = "1"
    _guarding = True
    try:
        with guard_user_errors():
            yield
    finally:
        _guarding = False
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


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
        if isinstance(seen, ConfigCompositionException | OverrideParseException):
            return _composition_message(seen)
        if isinstance(seen, OSError) and seen.filename and seen.errno == errno.ENOSPC:
            return f"no space left on the device writing {seen.filename}; free space, then rerun with resume=auto"
        if isinstance(seen, OSError) and seen.filename and seen.errno in _UNWRITABLE:
            return f"cannot write {seen.filename} ({seen.strerror}); choose a writable hydra.run.dir"
        seen = seen.__cause__ or seen.__context__
    return None


# Options that Hydra plugins provide: their absence means a missing optional dependency, not a typo.
PLUGIN_OPTIONS = {
    "hydra/launcher/joblib": "hydra-joblib-launcher",
    "hydra/launcher/submitit_local": "hydra-submitit-launcher",
    "hydra/launcher/submitit_slurm": "hydra-submitit-launcher",
    "hydra/sweeper/optuna": "optuna (this repository's sweeper in hydra_plugins/ needs it)",
}


def _composition_message(error: Exception) -> str:
    """One line for Hydra's composition errors, naming the group or key and what it accepts."""
    if isinstance(error, MissingConfigException) and error.options:
        group, _, option = (error.missing_cfg_file or "").rpartition("/")
        package = PLUGIN_OPTIONS.get(f"{group}/{option}")
        install = f" ({package} is not installed: pip install -e '.[sweeps]')" if package else ""
        return f"{group}={option} is not an option of {group}{install}; choose one of: {', '.join(error.options)}"
    if isinstance(error, OverrideParseException):
        if error.override and "=" not in error.override:  # `trainer.epochs 3`: the shell split key and value
            return f"cannot parse the override {error.override!r}: use key=value, e.g. {_with_value(error.override)}"
        return f"cannot parse the override {error.override!r}: {str(error).splitlines()[0]}"
    cause = error.__cause__
    if isinstance(cause, ConfigKeyError | ConfigAttributeError) and cause.full_key:
        return _unknown_key_message(cause)
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return " ".join(line for line in lines if not line.startswith(("Config search path", "provider=")))


def _with_value(key: str) -> str:
    """``key=<the next command-line word>`` when the user typed ``key value``, else ``key=...``."""
    words = sys.argv[1:]
    index = words.index(key) if key in words else -1
    value = words[index + 1] if 0 <= index < len(words) - 1 and "=" not in words[index + 1] else "..."
    return f"{key}={value}"


def _unknown_key_message(error: ConfigKeyError | ConfigAttributeError) -> str:
    """A key the config lacks: the near key if there is one, else the keys there are (or that there are none)."""
    parent, _, name = error.full_key.rpartition(".")
    known = [] if error.parent_node is None else [str(k) for k in error.parent_node.keys()]
    known = sorted(k for k in known if k != "hydra" and not k.startswith("_"))
    where = parent or "the config"
    if not parent and name in MOVED_KEYS:
        return _moved_key_message(name)
    if parent == "evaluator" and set(known) <= set(ODE_SCORE_KEYS):  # evaluator=none: the ODE scores' keys only
        return (f"{error.full_key}: evaluator={_chosen_option(parent)} scores no samples and has no such key; "
                f"choose an evaluator (e.g. evaluator=digits) or drop {error.full_key}")
    near = near_key(name, known)
    if near is not None:
        return f"{error.full_key} is not a key of {where}; did you mean {parent + '.' if parent else ''}{near}?"
    if not known:
        return (f"{error.full_key}: {parent}={_chosen_option(parent)} has no keys to set; "
                f"choose another {parent} option or drop {error.full_key}")
    return (f"{error.full_key} is not a key of {where} (its keys: {', '.join(known)}); "
            f"to add a new key use +{error.full_key}=...")


def _moved_key_message(name: str) -> str:
    """A top-level key of an earlier version (``repa.weight=0.5``): the key it is now (``method.repa.weight``)."""
    given = [w.partition("=")[0].lstrip("+~") for w in sys.argv[1:]]
    old = next((key for key in given if key == name or key.startswith(f"{name}.")), name)
    new = MOVED_KEYS[name] + old[len(name):]
    return f"{old} is now {new}: set {new}=... instead"


def _chosen_option(group: str) -> str:
    """The option of ``group`` chosen on the command line (``none`` for ``evaluator=none``), else ``its option``."""
    chosen = [w.partition("=")[2] for w in sys.argv[1:] if w.partition("=")[0].lstrip("+~") == group]
    return chosen[-1] if chosen else "its option"


def near_key(key: str, keys: Iterable[str]) -> str | None:
    """The key of ``keys`` the user probably meant by ``key``: one it truncates (``trainer.ema`` for
    ``trainer.ema_decay``), else the closest spelling (difflib), else None."""
    keys = list(keys)
    extended = [k for k in keys if k.startswith(key)]
    match = extended[:1] or difflib.get_close_matches(key, keys, n=1)
    return match[0] if match else None

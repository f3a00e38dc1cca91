"""Checks a multirun makes before its first job, as a Hydra callback (registered under ``hydra.callbacks``).

Hydra composes a sweep's jobs one at a time, so a bad swept key would fail only when its job starts (for
Optuna, after recording a trial that never ends). These checks make that one line and exit 2 up front, and
create the folder of an Optuna SQLite storage before Optuna opens it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import OverrideParseException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from diffusion.app.errors import guard_user_errors, near_key
from diffusion.runtime.checks import ConfigError

SQLITE_PREFIX = "sqlite:///"
_ABSENT = object()


class SweepChecks(Callback):
    """``on_multirun_start``: the swept keys exist, a requeuing launcher resumes, the sweep directory holds no
    earlier sweep's runs, and the Optuna study's folder exists."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        with guard_user_errors():
            check_swept_keys(config)
            check_requeue_resumes(config)
            check_sweep_dir_is_new(config)
        prepare_study_storage(config)


def check_swept_keys(config: DictConfig) -> None:
    """Every key of ``hydra.sweeper.params`` and of the command line's sweeps is a key of the composed config,
    or a config group swept over options it has.

    Raises:
        ConfigError: naming the key, where it was swept, and the nearest existing key.
    """
    for source, override in _sweep_overrides(config):
        if override.is_add() or override.is_force_add() or override.is_delete() or override.is_hydra_override():
            continue  # +key creates the key; hydra/... and hydra.* are checked by Hydra itself
        key = override.key_or_group
        if key in config.hydra.runtime.choices:
            _check_group_options(source, key, override)
        elif not _has_key(config, key):
            raise ConfigError(f"{source} sweeps {key}, which the config does not have{_nearest(config, key)}")


def check_requeue_resumes(config: DictConfig) -> None:
    """A launcher that requeues a timed-out job (``max_num_timeout`` > 0) reruns it in its own run directory,
    where run.py continues the run only with ``resume=auto``.

    Raises:
        ConfigError: the launcher requeues and ``resume`` is unset.
    """
    requeues = OmegaConf.select(config, "hydra.launcher.max_num_timeout", default=0) or 0
    if requeues > 0 and config.get("resume") is None:
        raise ConfigError(
            f"hydra.launcher.max_num_timeout={requeues} requeues a timed-out job into its own run directory: "
            "pass resume=auto so it continues from its checkpoint, or set hydra.launcher.max_num_timeout=0"
        )


def check_sweep_dir_is_new(config: DictConfig) -> None:
    """Job numbers restart at 0 in every multirun, so a sweep into an earlier sweep's directory would stop at its runs
    (an Optuna study would keep an unfinished trial) unless ``resume=auto``.

    Raises:
        ConfigError: a job directory of ``hydra.sweep.dir`` already holds checkpoints and ``resume`` is unset.
    """
    sweep_dir = Path(str(config.hydra.sweep.dir))
    if config.get("resume") is not None or not sweep_dir.is_dir():
        return
    runs = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir() and any(p.glob("checkpoints/*.pt")))
    if runs:
        raise ConfigError(
            f"hydra.sweep.dir={sweep_dir} already holds the runs of an earlier sweep ({', '.join(runs[:5])}"
            f"{', ...' if len(runs) > 5 else ''}): choose a new hydra.sweep.dir, or pass resume=auto to continue them"
        )


def prepare_study_storage(config: DictConfig) -> None:
    """Create the folder of a ``sqlite:///path`` Optuna storage (a relative path is relative to the cwd), and
    warn when it continues a stored study with a fixed sampler seed: a sampler seeded as before proposes the
    earlier run's first trials again."""
    database = sqlite_database(config)
    if database is None:
        return
    seed = OmegaConf.select(config, "hydra.sweeper.sampler.seed", default=None)
    if database.is_file() and seed is not None:
        print(
            f"warning: continuing the Optuna study stored in {database} with hydra.sweeper.sampler.seed={seed}; "
            "if an earlier run used that seed, its first trials are proposed again: pass another seed",
            file=sys.stderr,
        )
    database.parent.mkdir(parents=True, exist_ok=True)


def sqlite_database(config: DictConfig) -> Path | None:
    """The file of the sweeper's ``sqlite:///<path>`` storage; None for no storage, another database, or memory."""
    storage = OmegaConf.select(config, "hydra.sweeper.storage", default=None)
    if not isinstance(storage, str) or not storage.startswith(SQLITE_PREFIX):
        return None
    path = storage[len(SQLITE_PREFIX) :]
    return Path(path) if path and path != ":memory:" else None


def _sweep_overrides(config: DictConfig) -> Iterator[tuple[str, Override]]:
    """(where it came from, override) for the sweeper's search space and for the command line's overrides."""
    parser = OverridesParser.create()
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    sources = [("hydra.sweeper.params", [f"{key}={value}" for key, value in params.items()])]
    sources.append(("the command line", list(config.hydra.overrides.task)))
    for source, lines in sources:
        for line in lines:
            try:
                (override,) = parser.parse_overrides([line])
            except OverrideParseException as error:
                raise ConfigError(f"{source}: cannot parse {line!r}: {str(error).splitlines()[0]}") from error
            yield source, override


def _check_group_options(source: str, group: str, override: Override) -> None:
    if override.is_interval_sweep():
        raise ConfigError(f"{source} sweeps config group {group} over an interval; use {group}=choice(a, b, ...)")
    if override.is_sweep_override():
        values = list(override.sweep_string_iterator())
    else:
        value = override.value()
        values = [] if value is None else [str(value)]
    options = GlobalHydra.instance().config_loader().get_group_options(group)
    for value in values:
        if value not in options and value != "null":
            raise ConfigError(f"{source} sweeps {group}={value}, but {group} has only the options {options}")


def _has_key(config: DictConfig, key: str) -> bool:
    try:
        return OmegaConf.select(config, key, default=_ABSENT, throw_on_missing=True) is not _ABSENT
    except OmegaConfBaseException:  # the key is there; its value is ??? (required) or does not resolve
        return True


def _nearest(config: DictConfig, key: str) -> str:
    tree = OmegaConf.to_container(config, resolve=False)
    tree.pop("hydra", None)  # type: ignore[union-attr]
    keys = list(_dotted_keys(tree)) + list(config.hydra.runtime.choices)
    match = near_key(key, keys)
    return f" (did you mean {match}?)" if match else ""


def _dotted_keys(tree: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield f"{prefix}{key}"
            yield from _dotted_keys(value, f"{prefix}{key}.")

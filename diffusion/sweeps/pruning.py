"""The job's side of a pruning Optuna search: report each epoch's objective to its trial, stop when pruned.

A pruned trial writes ``pruned.json``, is marked PRUNED in the stored study itself (whatever the launcher makes of
the exception) and raises :class:`TrialPruned`. Optuna does not store the pruner, so :func:`make_pruner` builds it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.trial import TrialState

from diffusion.runtime.checks import ConfigError, check_choice
from diffusion.runtime.signals import Pruned
from diffusion.storage.atomic import atomic_write_text
from diffusion.sweeps.job_results import PRUNED_MARKER

PrunerName = Literal["median", "percentile", "successive_halving", "hyperband", "none"]
PRUNERS: dict[str, Callable[..., optuna.pruners.BasePruner]] = {
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "none": optuna.pruners.NopPruner,
}
EpochEndHook = Callable[[int, Mapping[str, float]], None]


class TrialPruned(optuna.TrialPruned, Pruned):
    """The search stopped this job early; an ``optuna.TrialPruned``, so Optuna's own loops count it too."""


def make_pruner(name: PrunerName = "median", **kwargs: Any) -> optuna.pruners.BasePruner:
    """An Optuna pruner from its short name and keyword arguments (ConfigError naming ``optuna_trial.pruner``)."""
    check_choice(name, "optuna_trial.pruner.name", PRUNERS)
    try:
        return PRUNERS[name](**kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"optuna_trial.pruner: {name} pruner refused {kwargs}: {error}") from error


def pruning_hook(
    storage: str,
    study_name: str,
    trial_number: int,
    pruner: optuna.pruners.BasePruner | None = None,
    monitor: str = "val/loss",
    run_dir: str | Path | None = None,
) -> EpochEndHook:
    """A per-epoch ``hook(epoch, metrics)`` that reports ``metrics[monitor]`` (when finite) to trial
    ``trial_number`` and raises :class:`TrialPruned` when the ``pruner`` stops it. ConfigError when the trial is
    missing or already finished.
    """
    store = optuna.storages.get_storage(storage)
    study = optuna.load_study(study_name=study_name, storage=store, pruner=pruner or make_pruner())
    try:
        trial_id = store.get_trial_id_from_study_id_trial_number(store.get_study_id_from_name(study_name), trial_number)
    except KeyError as error:
        raise ConfigError(
            f"optuna_trial.number={trial_number}: no such trial in study {study_name} ({storage})"
        ) from error
    state = store.get_trial(trial_id).state
    if state != TrialState.RUNNING:
        raise ConfigError(f"optuna_trial.number={trial_number} of study {study_name} is {state.name}, not running")
    trial = optuna.trial.Trial(study, trial_id)

    def report(epoch: int, metrics: Mapping[str, float]) -> None:
        value = metrics.get(monitor)
        if value is None or not math.isfinite(float(value)):
            return
        trial.report(float(value), step=epoch)
        if not trial.should_prune():
            return
        line = f"pruned by the Optuna search at epoch {epoch}: {monitor}={float(value):.6g} (trial {trial_number})"
        if run_dir is not None:
            marker = {"trial": trial_number, "study": study_name, "epoch": epoch, monitor: float(value)}
            atomic_write_text(Path(run_dir, PRUNED_MARKER), json.dumps(marker) + "\n")
        study.tell(trial_number, state=TrialState.PRUNED, skip_if_finished=True)
        raise TrialPruned(line)

    return report

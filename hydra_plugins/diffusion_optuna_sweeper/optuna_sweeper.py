"""Hydra sweeper ``hydra/sweeper=optuna``: an Optuna search (Optuna 3 and later) whose jobs report per-epoch
values and can be pruned (hydra-optuna-sweeper, which must not be installed beside it, needs optuna<3 and sees
one value per trial).

The study is driven with ask/tell; the asked trials run through the configured Hydra launcher, each job getting
``++optuna_trial.number``/``storage``/``study_name`` so that it reports to the same stored study
(:func:`diffusion.sweeps.pruning.pruning_hook`). Pruning needs a storage every job reaches (SQLite on a shared
disk, or a database server). The search space uses Hydra's sweep syntax (``choice``, ``range``, ``interval``,
``tag(log, ...)``).
"""

# No `from __future__ import annotations`: Hydra executes plugin modules outside sys.modules while scanning,
# and a dataclass with string annotations then cannot resolve them.
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)
SQLITE_PREFIX = "sqlite:///"
TRIAL_KEY = "optuna_trial"  # the job config node the sweeper fills (see conf/hparams_search/optuna.yaml)


@dataclass
class DiffusionOptunaSweeperConf:
    _target_: str = "hydra_plugins.diffusion_optuna_sweeper.optuna_sweeper.DiffusionOptunaSweeper"
    sampler: Any = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": None})
    direction: str = "minimize"
    study_name: Optional[str] = None
    storage: Optional[str] = None  # sqlite:///path or a database URL; None: in memory, no pruning
    n_trials: int = 20
    n_jobs: int = 1  # trials asked and launched at once
    params: Optional[Dict[str, str]] = None


ConfigStore.instance().store(
    group="hydra/sweeper", name="optuna", node=DiffusionOptunaSweeperConf, provider="diffusion"
)


class DiffusionOptunaSweeper(Sweeper):
    def __init__(
        self,
        sampler: Any,
        direction: str,
        study_name: Optional[str],
        storage: Optional[str],
        n_trials: int,
        n_jobs: int,
        params: Optional[Dict[str, str]],
    ) -> None:
        self.sampler_config = sampler
        self.direction = direction
        self.study_name = study_name
        self.storage = absolute_sqlite(storage)
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.params = dict(params or {})
        self.hydra_context: Optional[HydraContext] = None
        self.config: Optional[DictConfig] = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context = hydra_context  # validate_batch_is_legal composes each job's config with it
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: List[str]) -> None:
        import optuna

        assert self.config is not None and self.launcher is not None
        space, fixed = search_space(self.params, arguments)
        sampler = self.sampler_config  # Hydra instantiates the sweeper's nested _target_ nodes with it
        if isinstance(sampler, (dict, DictConfig)):
            sampler = instantiate(sampler)
        study = optuna.create_study(
            study_name=self.study_name, storage=self.storage, sampler=sampler, direction=self.direction,
            load_if_exists=True,
        )
        if self.storage is None:
            print("warning: hydra.sweeper.storage is not set: jobs cannot report to the study, so nothing is "
                  "pruned; set hydra.sweeper.storage=sqlite:///<path>/optuna.db", file=sys.stderr)
        job_index, asked = 0, 0
        while asked < self.n_trials:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, self.n_trials - asked))]
            # The trial's parameters first, as the Hydra Optuna sweeper orders them; then the fixed overrides.
            batch = [trial_overrides(t.params) + fixed + self.job_overrides(study, t.number) for t in trials]
            self.validate_batch_is_legal(batch)
            returns = self.launcher.launch(batch, initial_job_idx=job_index)
            for trial, job in zip(trials, returns):
                tell(study, trial.number, job)
            asked += len(trials)
            job_index += len(trials)
        write_results(study, Path(self.config.hydra.sweep.dir))

    def job_overrides(self, study: Any, number: int) -> List[str]:
        if self.storage is None:
            return []
        return [
            f"++{TRIAL_KEY}.number={number}",
            f"++{TRIAL_KEY}.storage={quote(self.storage)}",
            f"++{TRIAL_KEY}.study_name={quote(study.study_name)}",
        ]


def tell(study: Any, number: int, job: Any) -> None:
    """Tell the study how job ``number`` ended; a trial the job already finished itself (pruned) is kept."""
    import optuna
    from optuna.trial import TrialState

    try:
        value = job.return_value
    except optuna.TrialPruned:
        study.tell(number, state=TrialState.PRUNED, skip_if_finished=True)
        return
    except Exception:
        study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
        raise
    if value is None or not math.isfinite(float(value)):
        study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
        return
    study.tell(number, float(value), skip_if_finished=True)


def search_space(params: Dict[str, str], arguments: List[str]) -> tuple[Dict[str, Any], List[str]]:
    """Optuna distributions of the swept keys (config ``params``, then sweeps on the command line, which win) and
    the command line's other overrides, passed to every job unchanged."""
    parser = OverridesParser.create()
    parsed = parser.parse_overrides([f"{key}={value}" for key, value in params.items()])
    parsed += parser.parse_overrides(arguments)
    space: Dict[str, Any] = {}
    fixed: List[str] = []
    for override in parsed:
        if override.is_sweep_override():
            space[override.get_key_element()] = distribution(override)
        else:
            fixed.append(override.input_line or f"{override.get_key_element()}={override.get_value_element_as_str()}")
    return space, fixed


def distribution(override: Override) -> Any:
    """The Optuna distribution of one Hydra sweep: choice -> categorical, range -> int (or stepped float),
    interval -> float or int, ``tag(log, ...)`` -> log scale."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    value = override.value()
    if isinstance(value, ChoiceSweep) or (isinstance(value, RangeSweep) and value.shuffle):
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if isinstance(value, RangeSweep):
        values = list(override.sweep_iterator())
        if all(isinstance(v, int) for v in values):
            return IntDistribution(min(values), max(values), step=abs(int(value.step or 1)))
        return FloatDistribution(min(values), max(values), step=abs(float(value.step or 1)))
    if isinstance(value, IntervalSweep):
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log_scale)
        return FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise ValueError(f"{override.input_line}: the Optuna sweeper supports choice, range and interval sweeps")


def trial_overrides(params: Dict[str, Any]) -> List[str]:
    return [f"{key}={value}" for key, value in params.items()]


def quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def absolute_sqlite(storage: Optional[str]) -> Optional[str]:
    """``sqlite:///relative/path`` made absolute, so that a job started in another directory finds the study."""
    if not storage or not storage.startswith(SQLITE_PREFIX) or storage.startswith(SQLITE_PREFIX + "/"):
        return storage
    path = storage[len(SQLITE_PREFIX):]
    return storage if path.startswith(":memory:") or not path else SQLITE_PREFIX + str(Path(path).resolve())


def write_results(study: Any, sweep_dir: Path) -> None:
    """``optimization_results.yaml``: the best trial of the study so far (including earlier sweeps' trials)."""
    from optuna.trial import TrialState

    states = {state.name.lower(): 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        states[trial.state.name.lower()] += 1
    results: Dict[str, Any] = {"name": "optuna", "trials": {k: v for k, v in states.items() if v}}
    try:
        results.update(best_params=study.best_params, best_value=study.best_value, best_trial=study.best_trial.number)
    except ValueError:
        results["best_value"] = None  # no trial completed
    sweep_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
    log.info("Best value %s with %s", results.get("best_value"), results.get("best_params"))

"""What the app reads besides this command's config: an earlier run's config, the sampling method chosen on
this command line, the autoguidance guide, and the search's per-epoch hook."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from diffusion.app.hydra_run import current_job
from diffusion.app.method_config import make_method
from diffusion.loggers.naming import logged_key
from diffusion.runtime.checks import ConfigError
from diffusion.storage.export import load_exported
from diffusion.storage.legacy import upgrade_config
from diffusion.storage.safe_load import check_safe_targets

# Method keys that change sampling, not what the network learned: taken from the command line when given there
# (a ``method=<preset>`` there brings its ``default_solver``; the run's trained formulation stays). ``shift``: a flow
# run's sampling-time shift (SD3 eq. 23), which moves the solver's time grid only.
SAMPLING_METHOD_KEYS = ("clip_denoised", "default_solver", "shift")
# Sampler keys an earlier run's samples were drawn with (its solver, grid, guidance, precision): ``task=sample``,
# ``evaluate`` and ``posthoc_ema`` follow the run's unless this command line sets them, so scoring a run again without
# sampler keys draws what the run drew (an MNIST run's guidance w = 2 and trailing grid, not the defaults' w = 1 and
# leading). Not followed: how this job runs (seed, device, batch size, bar) and how many samples it draws.
RUN_SAMPLER_KEYS = ("solver", "steps", "eta", "timestep_spacing", "precision", "guidance_scale", "class_labels", "rho",
                    "s_churn", "s_tmin", "s_tmax", "s_noise", "atol", "rtol", "diffusion", "guide", "guide_scale")


# What a task that reads an earlier run (``run_dir``: sample, evaluate, posthoc_ema, distill, tune, reflow) takes
# from that run's config.yaml, whole. A command-line key of these groups that asks for something else than the run
# has would be dropped, so it is refused (one that repeats the run's value passes: a training command line can be
# reused). ``task=evaluate`` and ``posthoc_ema`` take ``data=`` with its keys as the data to score against (the
# reference images); without it the run's data is its own there too. Where the data lies and how it is read are not
# what it is: :data:`DATA_ACCESS_KEYS` given here replace the run's (data moved since, another machine's CPUs).
DATA_ACCESS_KEYS = ("data.root", "data.path", "data.num_workers")
RUN_OWNED_GROUPS = ("data", "model", "schedule")
SCORING_TASKS = ("evaluate", "posthoc_ema")  # data=<option> there: the data the samples are scored against
# Tasks whose method is the run's but for SAMPLING_METHOD_KEYS (task=tune builds its own: ECT's, or sCD's method=scm)
METHOD_OWNING_TASKS = ("sample", "evaluate", "posthoc_ema", "distill", "reflow")


def checked_run_config(cfg: DictConfig, run_cfg: DictConfig, keys: set[str]) -> DictConfig:
    """``run_cfg``, the config of the run ``cfg.task`` reads, checked against this command line's ``keys`` of the
    groups the task takes from it (:data:`RUN_OWNED_GROUPS`), with this command line's :data:`DATA_ACCESS_KEYS`
    (not where ``data=<option>`` is the data that ``task=evaluate`` or ``posthoc_ema`` scores against).

    Raises:
        ConfigError: naming the first key that differs from the run's (``model.depth``; ``model`` for ``model=dit``
            on a run of another network), or an access key for a run whose data has no such setting.
    """
    scoring_data = cfg.task in SCORING_TASKS and "data" in keys
    owned = tuple(group for group in RUN_OWNED_GROUPS if not (scoring_data and group == "data"))
    if cfg.task in METHOD_OWNING_TASKS:
        owned += ("method",)
    for key in sorted(keys - set(DATA_ACCESS_KEYS)):
        group = key.split(".")[0]
        if group not in owned or key == "method" or key.removeprefix("method.") in SAMPLING_METHOD_KEYS:
            continue  # method=<preset>: its default solver (sampling_method_config); the method's sampling keys
        path = key if "." in key else f"{key}._target_"  # model=dit: the network class
        asked, had = _plain(cfg, path), _plain(run_cfg, path)
        if asked != had:
            raise ConfigError(f"{key}: this command line asks for {asked}, run_dir's run has {had}; task={cfg.task} "
                              f"takes {group} from the run's config.yaml: drop {key} (another {group} is a new run)")
    if scoring_data:
        return run_cfg
    for key in DATA_ACCESS_KEYS:
        if key in keys:
            name = key.removeprefix("data.")
            if name not in run_cfg.data:
                raise ConfigError(f"{key}: run_dir's data ({run_cfg.data._target_}) has no {name} to replace")
            run_cfg.data[name] = cfg.data[name]
    return run_cfg


def _plain(cfg: DictConfig, path: str) -> Any:
    """The value at ``path`` as plain Python (None where it is absent or does not resolve)."""
    try:
        value = OmegaConf.select(cfg, path)
        return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    except OmegaConfBaseException:  # an interpolation that does not resolve in this config: no value to compare
        return None


def command_line_keys() -> set[str]:
    """The keys and groups this command line overrides (``method=ddim`` -> ``method``)."""
    return current_job().keys


def load_source_config(source: Path) -> DictConfig:
    """The config of a run directory (its ``config.yaml``) or of exported weights (``.safetensors``).

    Raises:
        ConfigError: no ``config.yaml`` there; CheckpointError: a config whose ``_target_`` leaves this package.
    """
    if source.suffix == ".safetensors":
        return OmegaConf.create(upgrade_config(load_exported(source)[1]))
    path = source / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"run_dir={source}: no config.yaml there; is it a run directory made by run.py?")
    config = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    check_safe_targets(config, path)  # instantiating it must not run foreign code
    return OmegaConf.create(upgrade_config(config))


def sampling_method_config(cfg: DictConfig, run_cfg: DictConfig) -> DictConfig:
    """The run's trained method with the :data:`SAMPLING_METHOD_KEYS` this command line gives: ``method=ddim``
    brings DDIM as the default solver (a method that cannot take it says so, naming ``sampler.solver``)."""
    method = run_cfg.method.copy()
    keys = command_line_keys()
    given = [key for key in SAMPLING_METHOD_KEYS if f"method.{key}" in keys]
    if "method" in keys and "default_solver" in cfg.method:
        given.append("default_solver")  # a preset: the Gaussian diffusion or EDM with that solver
    for key in given:
        method[key] = cfg.method[key]
    return method


def sampled_config(command: DictConfig, built: dict[str, Any], evaluator: DictConfig) -> DictConfig:
    """What a job that samples an earlier run ran, for its ``config.yaml``: this command line's config (task, seed,
    run_dir, the sampler as followed) with the run's data, network, method (with this command's sampling keys) and
    autoencoder, as ``built`` from it, and the evaluator it scored with (``NoneEvaluator`` for ``task=sample``)."""
    used = command.copy()
    with open_dict(used):
        for key in ("data", "model", "method", "autoencoder"):
            if key in built:
                used[key] = built[key]
        used.evaluator = evaluator
    return used


def follow_run_sampler(cfg: DictConfig, run_cfg: DictConfig) -> None:
    """Set ``cfg.sampler``'s :data:`RUN_SAMPLER_KEYS` to the run's where this command line leaves them open: not
    under ``sampler=<option>``, not a ``sampler.<key>`` given here, not the precision under ``trainer.precision``
    (``auto`` resolves per machine; a run's samples should not change with the machine that reads it), and not the
    solver and steps under ``method=<preset>``, ``method.default_solver`` or ``sampler.solver`` (a step count belongs
    to its solver)."""
    keys = command_line_keys()
    recorded = dict(run_cfg.get("sampler") or {})
    trained = run_cfg.get("trainer", {}).get("precision")
    if "precision" not in recorded and trained is not None:  # a run from before the sampler had its own
        recorded["precision"] = trained
    given = {key for key in RUN_SAMPLER_KEYS if f"sampler.{key}" in keys}
    if "trainer.precision" in keys:
        given.add("precision")
    if keys & {"method", "method.default_solver", "sampler.solver"}:
        given |= {"solver", "steps"}  # a step count belongs to its solver
    for key in ("precision",) if "sampler" in keys else RUN_SAMPLER_KEYS:
        if key in recorded and key not in given:
            cfg.sampler[key] = recorded[key]


def search_hooks(cfg: DictConfig, monitor: str, run_dir: Path) -> list[Any]:
    """The per-epoch reporting hook of an Optuna trial (``optuna_trial.number`` set by the pruning sweeper of
    ``hparams_search=optuna``): it reports the monitored value to the study and stops a pruned trial. Empty
    outside such a search."""
    trial = cfg.get("optuna_trial")
    if not trial or trial.get("number") is None:
        return []
    from diffusion.sweeps.pruning import make_pruner, pruning_hook  # optuna: the sweeps extra

    pruner = make_pruner(**OmegaConf.to_container(trial.pruner, resolve=True))  # type: ignore[arg-type]
    reported = logged_key(monitor)
    return [pruning_hook(trial.storage, trial.study_name, int(trial.number), pruner, reported, run_dir)]


def load_guide_model(guide: str, run_dir: Path | None, main_prediction: str) -> Any:
    """The autoguidance guide (``sampler.guide``: a checkpoint name of this run, a checkpoint file, a run directory
    or exported weights), built from its own config and loaded with its EMA weights.

    Raises:
        ConfigError: no such guide, or a guide trained to predict something else than the main model.
    """
    from diffusion.storage import checkpoint
    from diffusion.storage.file_manager import FileManager, load_checkpoint

    source = Path(guide)
    if not source.exists() and run_dir is not None:
        source = Path(run_dir) / "checkpoints" / (guide if guide.endswith(".pt") else f"{guide}.pt")
    if source.suffix == ".safetensors":
        weights, config = load_exported(source)
    elif source.is_dir() or source.is_file():
        ckpt = load_checkpoint(FileManager(source).best_or_last() if source.is_dir() else source)
        weights, config = checkpoint.ema_weights(ckpt), ckpt.get("config") or {}
    else:
        raise ConfigError(f"sampler.guide={guide}: no such checkpoint, run directory or exported weights")
    check_safe_targets(config, source)
    guide_cfg = OmegaConf.create(upgrade_config(config))
    trained = make_method(guide_cfg.method).prediction
    if trained != main_prediction:
        raise ConfigError(f"sampler.guide={guide} predicts {trained} but the main model predicts {main_prediction}; "
                          "a guide must share the main model's prediction target")
    model = instantiate(guide_cfg.model, _convert_="all")
    model.load_state_dict(weights)
    return model


def read_teacher_run(cfg: DictConfig, what: str) -> tuple[Path, DictConfig]:
    """The run directory ``run_dir`` of a task that trains from an earlier run (``distill``, ``reflow``), and its
    config.

    Raises:
        ConfigError: no ``run_dir``, one that is not a run directory, or a data-parallel launch.
    """
    teacher_dir = require_run_dir(cfg, what)
    if teacher_dir.suffix == ".safetensors" or not teacher_dir.is_dir():
        raise ConfigError(f"task={cfg.task}: run_dir={teacher_dir} must be a run directory holding checkpoints/")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(f"task={cfg.task} runs in one process; launch it with python, not torchrun")
    return teacher_dir, load_source_config(teacher_dir)


def inherit_teacher(cfg: DictConfig, teacher_cfg: DictConfig, keys: tuple[str, ...]) -> DictConfig:
    """A copy of this command's config with the teacher's ``keys`` groups (:func:`checked_run_config`: this command
    line may repeat them, not change them, but for where the data lies) and, unless this command line chose one, its
    evaluator."""
    teacher_cfg = checked_run_config(cfg, teacher_cfg.copy(), command_line_keys())
    run_cfg = cfg.copy()
    for key in keys:
        if key in teacher_cfg:
            run_cfg[key] = teacher_cfg[key]
    if "evaluator" not in command_line_keys() and "evaluator" in teacher_cfg:
        run_cfg.evaluator = teacher_cfg.evaluator
    return run_cfg


def require_run_dir(cfg: DictConfig, what: str) -> Path:
    """``run_dir`` of ``task=sample|evaluate|export``, which must be given."""
    if cfg.run_dir is None:
        raise ConfigError(f"task={cfg.task} needs run_dir=<{what}>")
    return Path(cfg.run_dir)


"""The config of a ``task=tune`` run, read from Hydra and from the trained run it starts from.

ECT (no ``method=`` on the command line) tunes an EDM run's network: the tuned run keeps the teacher's data,
model and EDM keys, its method becomes :class:`~diffusion.methods.ConsistencyTuning` with the ``tune.*`` keys.
sCD (``method=scm``) trains a TrigFlow consistency model of the teacher's architecture on the teacher's ODE (an EDM
or a flow run): its method is this command's ``method=scm`` with the teacher attached when it is built.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, NamedTuple

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from diffusion.app.hydra_run import HydraRun
from diffusion.app.method_config import make_method
from diffusion.app.run_config import inherit_teacher, read_teacher_run
from diffusion.methods import EDM, ConsistencyTuning, FlowMatching
from diffusion.methods.meanflow import TwoTimeFlow
from diffusion.methods.scm import TrigFlowTeacher
from diffusion.runtime.checks import ConfigError, check_float, check_int
from diffusion.storage import checkpoint
from diffusion.storage.file_manager import FileManager, load_checkpoint
from diffusion.tasks.components import Components

TEACHER_KEYS = ("data", "model")  # what the tuned run keeps of its teacher's: what it models, with what network
ECT_KEYS = ("stages", "q", "k", "b", "huber_c", "weighting", "sigma_mid", "p_mean", "p_std")  # tune.* -> the method


class TuneRun(NamedTuple):
    """The tuned run's config, its teacher's config and EMA weights, the teacher's optimizer steps, and whether
    it is sCD (``method=scm``) rather than ECT."""

    cfg: DictConfig
    teacher_cfg: DictConfig
    teacher_weights: dict[str, Any]
    teacher_steps: int
    distill: bool


def tune_run_config(cfg: DictConfig, job: HydraRun) -> TuneRun:
    """The tuned run's config: the teacher's data and model, this command's trainer (for ``tune.steps``, or
    ``tune.share`` of the teacher's steps), sampler, logger and evaluator (the teacher's unless chosen here, with
    this command's ``evaluator.*`` keys).

    Raises:
        ConfigError: naming ``run_dir`` for a teacher of a formulation the recipe cannot start from, ``method``
            for a method other than scm, ``trainer.max_steps`` (``tune.steps`` sets it), or the ``tune.*`` key out
            of range.
    """
    distill = tune_student(job)
    if cfg.trainer.get("max_steps") is not None:  # the tuned run's steps are tune.steps'; this one would be dropped
        raise ConfigError("trainer.max_steps is set by task=tune from tune.steps (or tune.share); drop "
                          "trainer.max_steps and set tune.steps")
    teacher_dir, teacher_cfg = read_teacher_run(cfg, "a trained EDM run (ECT), or an EDM or flow run with method=scm")
    check_teacher(get_class(teacher_cfg.method._target_), teacher_dir, distill)
    state = load_checkpoint(FileManager(teacher_dir).best_or_last())  # CheckpointError: "no checkpoint in ..."
    teacher_steps = checkpoint.global_step(state)
    steps = tuned_steps(cfg.tune, teacher_steps)
    run_cfg = inherit_teacher(cfg, teacher_cfg, TEACHER_KEYS)
    with open_dict(run_cfg):
        for key in sorted(k for k in job.keys if k.startswith("evaluator.")):  # on the teacher's evaluator too
            OmegaConf.update(run_cfg, key, OmegaConf.select(cfg, key), force_add=True)
        run_cfg.trainer.max_steps = steps
        if not distill:
            run_cfg.method = ect_method(teacher_cfg.method, cfg.tune, steps)
            tuning_trainer(run_cfg.trainer, teacher_cfg.trainer, cfg.tune, job.keys)
    return TuneRun(run_cfg, teacher_cfg, checkpoint.ema_weights(state), teacher_steps, distill)


def tuning_trainer(trainer: DictConfig, teacher_trainer: DictConfig, tune: DictConfig, command_line: set[str]) -> None:
    """ECT tunes trained weights: no LR warm-up, and ``tune.lr_scale`` of the teacher's LR (the paper's 1e-4 after
    EDM's 1e-3), unless this command line sets ``trainer.warmup_steps`` or ``trainer.lr``."""
    if "trainer.warmup_steps" not in command_line:
        trainer.warmup_steps = 0
    if "trainer.lr" not in command_line:
        trainer.lr = check_float(tune.lr_scale, "tune.lr_scale", minimum=0.0, inclusive=False) * teacher_trainer.lr


def tune_student(job: HydraRun) -> bool:
    """True for sCD (``method=scm`` on the command line), False for ECT (no ``method`` given).

    Raises:
        ConfigError: another ``method=``, or ``method.*`` keys without ``method=scm``.
    """
    chosen = job.choices.get("method")
    if "method" in job.keys and chosen != "scm":
        raise ConfigError(f"task=tune takes method=scm (sCD: a TrigFlow student of run_dir's ODE) or no method= "
                          f"(ECT: run_dir's network tuned), got method={chosen}")
    if "method" not in job.keys and any(key.startswith("method.") for key in job.keys):
        raise ConfigError("task=tune without method=scm is ECT, whose settings are tune.*; method.* keys are for "
                          "method=scm (sCD)")
    return "method" in job.keys


def check_teacher(formulation: type, teacher_dir: Path, distill: bool) -> None:
    """ECT starts from an EDM run; sCD from an EDM run or a flow (one time embedding).

    Raises:
        ConfigError: naming ``run_dir`` and the formulation it was trained with.
    """
    edm = issubclass(formulation, EDM) and not issubclass(formulation, ConsistencyTuning)
    flow = issubclass(formulation, FlowMatching) and not issubclass(formulation, TwoTimeFlow)
    if edm or (distill and flow):
        return
    needs = "an EDM or flow_matching run (sCD, method=scm)" if distill else "an EDM run (ECT; method=scm: sCD)"
    raise ConfigError(f"task=tune: run_dir={teacher_dir} was trained with {formulation.__name__}; it needs {needs}")


def tuned_steps(tune: DictConfig, teacher_steps: int) -> int:
    """``tune.steps``, or ``tune.share`` of the teacher's optimizer steps (at least one)."""
    if tune.steps is not None:
        return check_int(tune.steps, "tune.steps", minimum=1)
    return max(1, round(check_float(tune.share, "tune.share", minimum=0.0, inclusive=False) * teacher_steps))


def ect_method(teacher_method: DictConfig, tune: DictConfig, steps: int) -> DictConfig:
    """The teacher's EDM keys with ECT's target, its ``tune.*`` keys and the consistency solver."""
    ect = {key: tune[key] for key in ECT_KEYS}
    return OmegaConf.merge(teacher_method, {"_target_": "diffusion.methods.ConsistencyTuning",
                                            "default_solver": "consistency", "total_steps": steps, **ect})


def with_teacher(parts: Components, tuned: TuneRun) -> Components:
    """sCD's components: the method that trains is ``method=scm`` built with the teacher's ODE (the teacher run's
    network and method, its EMA weights, frozen); the sampler keeps the method built without it."""
    network = instantiate(tuned.teacher_cfg.model, _convert_="all")
    network.load_state_dict(tuned.teacher_weights)
    method = make_method(tuned.teacher_cfg.method)
    teacher = TrigFlowTeacher(network, method, parts.method.sigma_data)  # type: ignore[arg-type]
    return dataclasses.replace(parts, method=make_method(tuned.cfg.method, teacher=teacher))

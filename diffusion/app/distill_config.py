"""The config of a ``task=distill`` run, read from Hydra and from the teacher's run directory."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from diffusion.app.run_config import inherit_teacher, read_teacher_run
from diffusion.distill.teacher import TeacherSolver, teacher_solver
from diffusion.runtime.checks import ConfigError
from diffusion.storage.file_manager import FileManager

# What the student inherits from its teacher's run: what the network is and what data it models.
TEACHER_KEYS = ("data", "model", "schedule")


class DistillRun(NamedTuple):
    """The distillation run's config, the teacher's best checkpoint and the teacher's solver."""

    cfg: DictConfig
    teacher_checkpoint: Path
    teacher_step: TeacherSolver


def check_distill_option(cfg: DictConfig) -> None:
    """``distill=`` belongs to ``task=distill`` (elsewhere it would only change the trainer's settings).

    Raises:
        ConfigError: a ``distill=`` option with another task.
    """
    if cfg.get("distill") is not None and cfg.task != "distill":
        raise ConfigError(f"distill=... is for task=distill (got task={cfg.task}); drop distill= or set task=distill")


def distill_run_config(cfg: DictConfig) -> DistillRun:
    """The run's config: the teacher's data, model, schedule and ``method`` keys sampled with the student's method;
    this command's ``distill``, ``trainer``, ``sampler`` and ``logger``; the teacher's evaluator unless chosen here.

    Raises:
        ConfigError: no ``distill=`` option, ``trainer.max_steps`` given, no ``run_dir``, a run_dir without
            config.yaml or checkpoints, a teacher of an unsupported method, or a data-parallel launch.
    """
    if cfg.get("distill") is None:
        raise ConfigError("task=distill needs distill=progressive or distill=consistency")
    if cfg.trainer.get("max_steps") is not None:  # the distillation sets it; a value given here would be dropped
        steps = "distill.steps" if "steps" in cfg.distill else "distill.steps_per_round"
        raise ConfigError(f"trainer.max_steps is set by task=distill from {steps}; drop trainer.max_steps and set "
                          f"{steps}")
    teacher_dir, teacher_cfg = read_teacher_run(cfg, "the teacher's run directory, a ddpm/ddim run holding "
                                                      "checkpoints/")
    checkpoint = FileManager(teacher_dir).best_or_last()  # CheckpointError: "no checkpoint in ..."
    solver = teacher_solver(get_class(teacher_cfg.method._target_))
    run_cfg = inherit_teacher(cfg, teacher_cfg, TEACHER_KEYS)
    run_cfg.method = OmegaConf.merge(teacher_cfg.method, OmegaConf.to_container(cfg.student, resolve=True))
    return DistillRun(run_cfg, checkpoint, solver)

"""The config of a ``task=distill`` run, read from Hydra and from the teacher's run directory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from diffusion.app.run_config import command_line_keys, load_source_config, require_run_dir
from diffusion.distill.teacher import TeacherSolver, teacher_solver
from diffusion.storage.file_manager import FileManager
from diffusion.runtime.checks import ConfigError

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
    """The run's config: the teacher's data, model, schedule and diffusion (``method`` keys), sampled with the
    student's method (``student``); this command's ``distill``, ``trainer``, ``sampler`` and ``logger``; the
    teacher's evaluator unless this command chose one.

    Raises:
        ConfigError: no ``distill=`` option, no ``run_dir``, a run_dir without config.yaml or checkpoints, a
            teacher of an unsupported method, or a data-parallel launch.
    """
    if cfg.get("distill") is None:
        raise ConfigError("task=distill needs distill=progressive or distill=consistency")
    teacher_dir = require_run_dir(cfg, "the teacher's run directory, a ddpm/ddim run holding checkpoints/")
    if teacher_dir.suffix == ".safetensors" or not teacher_dir.is_dir():
        raise ConfigError(f"task=distill: run_dir={teacher_dir} must be a run directory holding checkpoints/")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("task=distill runs in one process; launch it with python, not torchrun")
    teacher_cfg = load_source_config(teacher_dir)
    checkpoint = FileManager(teacher_dir).best_or_last()  # CheckpointError: "no checkpoint in ..."
    solver = teacher_solver(get_class(teacher_cfg.method._target_))
    run_cfg = cfg.copy()
    for key in TEACHER_KEYS:
        run_cfg[key] = teacher_cfg[key]
    if "evaluator" not in command_line_keys() and "evaluator" in teacher_cfg:
        run_cfg.evaluator = teacher_cfg.evaluator
    run_cfg.method = OmegaConf.merge(teacher_cfg.method, OmegaConf.to_container(cfg.student, resolve=True))
    return DistillRun(run_cfg, checkpoint, solver)

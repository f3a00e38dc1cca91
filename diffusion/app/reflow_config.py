"""The config of a ``task=reflow`` run, read from the teacher's run directory: the teacher's data, network and flow,
trained on the teacher's pairs (:class:`~diffusion.methods.flow_matching.PairedFlowMatching`)."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from omegaconf import DictConfig

from diffusion.app.method_config import make_method
from diffusion.app.run_config import inherit_teacher, read_teacher_run
from diffusion.tasks.reflow import check_teacher

TEACHER_KEYS = ("data", "model", "schedule")  # what the reflowed flow inherits: the network and the data it models
PAIRED_FLOW = "diffusion.methods.PairedFlowMatching"


class ReflowRun(NamedTuple):
    """The reflow run's config and the teacher's run directory."""

    cfg: DictConfig
    teacher_dir: Path


def reflow_run_config(cfg: DictConfig) -> ReflowRun:
    """The run's config: the teacher's data, model, flow (independent coupling) and evaluator unless chosen here; this
    command's ``trainer``, ``sampler`` (which draws the pairs), ``logger`` and ``reflow``. Saved as ``config.yaml``.

    Raises:
        ConfigError: no ``run_dir``, a run_dir that is not a run directory, a teacher that is not a flow, a
            stochastic ``sampler.solver``, or a data-parallel launch.
    """
    teacher_dir, teacher_cfg = read_teacher_run(cfg, "the teacher's run directory, a flow run holding checkpoints/")
    teacher_method = make_method(teacher_cfg.method)
    check_teacher(teacher_method, cfg.sampler.solver or teacher_method.default_solver, teacher_dir)
    run_cfg = inherit_teacher(cfg, teacher_cfg, TEACHER_KEYS)
    method = teacher_cfg.method.copy()
    method._target_, method.coupling = PAIRED_FLOW, "independent"
    run_cfg.method = method
    return ReflowRun(run_cfg, teacher_dir)

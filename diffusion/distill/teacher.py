"""The teacher's deterministic solver step, the one place a distillation asks the teacher for its trajectory.

A Gaussian-diffusion teacher steps with deterministic DDIM (Song et al. 2021, eq. 12, eta = 0). Another teacher
(e.g. EDM-trained) adds its ``TeacherSolver`` (x_t -> x_{t_prev} on its probability-flow ODE) to :func:`teacher_solver`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from diffusion.methods.consistency import Consistency
from diffusion.methods.gaussian import GaussianDiffusion
from diffusion.runtime.checks import ConfigError

# (method, teacher network, x_t (B, ...), t (B,), t_prev (B,), model kwargs) -> x_{t_prev} (B, ...)
TeacherSolver = Callable[[GaussianDiffusion, nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]],
                         torch.Tensor]


def ddim_teacher_step(
    method: GaussianDiffusion, teacher: nn.Module, x_t: torch.Tensor, t: torch.Tensor, t_prev: torch.Tensor,
    kwargs: dict[str, Any],
) -> torch.Tensor:
    """One deterministic DDIM step of the teacher (t_prev = -1: to data), with the method's x0 clipping."""
    return method.ddim_step(x_t, t, t_prev, teacher(x_t, t, **kwargs).float(), eta=0.0)


def teacher_solver(method_class: type) -> TeacherSolver:
    """The solver for a teacher trained with ``method_class``.

    Raises:
        ConfigError: a teacher of a diffusion with no solver here yet.
    """
    if isinstance(method_class, type) and issubclass(method_class, Consistency):
        raise ConfigError("task=distill: run_dir is a consistency student, whose network is no diffusion denoiser; "
                          "distil from the DDPM/DDIM run it came from")
    if isinstance(method_class, type) and issubclass(method_class, GaussianDiffusion):
        return ddim_teacher_step
    raise ConfigError(
        f"task=distill: the teacher was trained with method {getattr(method_class, '__name__', method_class)}, "
        "which has no teacher solver yet; distillation supports DDPM/DDIM-trained teachers (add one in "
        "diffusion/distill/teacher.py)"
    )

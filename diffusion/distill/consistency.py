"""Consistency distillation (Song et al. 2023, Alg. 2) from a DDPM/DDIM teacher on the discrete timesteps.

Notation map: t_1 < ... < t_N is the timestep grid ``round(linspace(0, T - 1, N))`` (N = ``distill.num_scales``);
Phi is one deterministic DDIM teacher step t_{n+1} -> t_n (the paper: EDM's Heun step); theta^- is the target
network, an EMA of the student with decay mu (``distill.target_decay``), not the Trainer's EMA; d is squared L2
(LPIPS needs pretrained weights).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.distill.teacher import TeacherSolver, ddim_teacher_step
from diffusion.methods.consistency import Consistency
from diffusion.runtime.checks import ConfigError, check_float, check_int


class ConsistencyDistillation(nn.Module):
    """The Trainer's "method" during consistency distillation:

        loss = || f_theta(x_{t_{n+1}}, t_{n+1}) - f_theta^-(x_hat_{t_n}, t_n) ||^2,
        x_{t_{n+1}} ~ q(x_t | x0),  x_hat_{t_n} = Phi_teacher(x_{t_{n+1}}; t_{n+1} -> t_n),  n ~ U{1, N-1}

    with f the :class:`~diffusion.methods.consistency.Consistency` parameterisation (f(x, t_1) = x / sqrt(abar_{t_1})
    by construction) and lambda(t_n) = 1. theta^- moves once per optimizer step; it is not checkpointed, so a resumed
    run restarts it at the student (:meth:`restart_target`), exact only for ``target_decay=0``.
    Settings: see conf/distill/consistency.yaml.

    Raises:
        ConfigError: naming the out-of-range ``distill.*`` key.
    """

    def __init__(self, method: Consistency, teacher: nn.Module, *, num_scales: int = 18, target_decay: float = 0.95,
                 steps: int = 2000, teacher_step: TeacherSolver = ddim_teacher_step) -> None:
        super().__init__()
        if not isinstance(method, Consistency):
            raise ConfigError("distill=consistency needs the student method diffusion.methods.Consistency "
                              f"(student._target_), got {type(method).__name__}")
        self.method = method
        self.num_timesteps = method.num_timesteps
        num_scales = check_int(num_scales, "distill.num_scales", 2, method.num_timesteps)
        self.target_decay = check_float(target_decay, "distill.target_decay", 0.0, 1.0)
        self.total_steps = check_int(steps, "distill.steps", minimum=1)
        grid = torch.linspace(0, method.num_timesteps - 1, num_scales, dtype=torch.float64).round().long()
        self.register_buffer("grid", torch.unique(grid), persistent=False)  # ascending t_1 = 0 < ... < T - 1
        self.teacher = teacher.eval().requires_grad_(False)
        self.target = copy.deepcopy(teacher).requires_grad_(False)  # theta^-
        self.teacher_step = teacher_step
        self._step_count: Callable[[], int] = lambda: 0
        self._target_step = 0  # the optimizer step the target last followed

    def bind(self, step_count: Callable[[], int], round_end: Any = None) -> None:
        """Tell the distillation how many optimizer steps are done (it has no rounds)."""
        self._step_count = step_count
        self._target_step = step_count()

    def restart_target(self, student_weights: dict[str, Any]) -> None:
        """theta^- <- theta (a resumed run)."""
        self.target.load_state_dict(student_weights)

    @torch.no_grad()
    def _follow_student(self, student: nn.Module) -> None:
        """theta^- <- mu theta^- + (1 - mu) theta, once per optimizer step (Alg. 2, last line)."""
        step = self._step_count()
        if step == self._target_step:
            return
        self._target_step = step
        torch._foreach_lerp_(list(self.target.parameters()), list(student.parameters()), 1.0 - self.target_decay)

    def compute_loss(self, model: nn.Module, x0: torch.Tensor, *, t: torch.Tensor | None = None,
                     noise: torch.Tensor | None = None, **model_kwargs: Any) -> torch.Tensor:
        """The consistency distillation loss of ``model`` (the student). ``t`` (validation's fixed draws, uniform
        over [0, T)) is mapped onto the grid's intervals; by default n is drawn uniformly."""
        if model.training:
            self._follow_student(model)
        intervals = len(self.grid) - 1
        if t is None:
            n = torch.randint(0, intervals, (x0.shape[0],), device=x0.device)
        else:
            n = (t * intervals) // self.num_timesteps
        grid = self.grid.to(x0.device)
        t_low, t_high = grid[n], grid[n + 1]
        if noise is None:
            noise = torch.randn_like(x0)
        x_high = self.method.q_sample(x0, t_high, noise)
        kwargs = self.method.condition_kwargs(model, model_kwargs)
        target = self.target_output(x_high, t_high, t_low, kwargs)
        prediction = self.method.consistency_function(x_high, t_high, model(x_high, t_high, **kwargs)).float()
        return F.mse_loss(prediction, target)

    @torch.no_grad()
    def target_output(
        self, x_high: torch.Tensor, t_high: torch.Tensor, t_low: torch.Tensor, kwargs: dict[str, Any]
    ) -> torch.Tensor:
        """f_theta^-(Phi(x_{t_{n+1}}), t_n) in float32 whatever the autocast."""
        with torch.autocast(x_high.device.type, enabled=False):
            x_low = self.teacher_step(self.method, self.teacher, x_high.float(), t_high, t_low, kwargs)
            return self.method.consistency_function(x_low, t_low, self.target(x_low, t_low, **kwargs).float())

    def extra_repr(self) -> str:
        return f"num_scales={len(self.grid)}, target_decay={self.target_decay}, steps={self.total_steps}"

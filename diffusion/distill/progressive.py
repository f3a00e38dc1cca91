"""Progressive distillation (Salimans & Ho 2022, Alg. 2): a student learns to take one DDIM step where its teacher
takes two; each round halves the sampling steps, and the student becomes the next round's teacher.

Notation (the paper's continuous time mapped to this repository's discrete timesteps):

    alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t)     z_t = alpha_t x + sigma_t eps
    student grid (N steps)  = spaced_timesteps(T, N, "trailing") = t_0 > t_1 > ... > t_{N-1}, then -1 (data)
    teacher grid (2N steps) = spaced_timesteps(T, 2N, "trailing"), which holds every student t_i at index 2i

``trailing`` spacing makes the grids nest for every N and starts at T - 1, as few-step sampling needs (Lin et al. 2024).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.distill.teacher import TeacherSolver, ddim_teacher_step
from diffusion.methods.base import extract
from diffusion.methods.gaussian import GaussianDiffusion
from diffusion.methods.schedules import spaced_timesteps
from diffusion.runtime.checks import ConfigError, check_int

RoundEnd = Callable[[int], dict[str, Any]]  # round index -> the weights the next round's teacher takes


class DistilledDDIM(GaussianDiffusion):
    """A progressively distilled student: samples with DDIM on the ``trailing`` grid it was trained on
    (``sampler.timestep_spacing`` is ignored), ``distilled_steps`` steps when ``sampler.steps=null``."""

    name = "distilled_ddim"
    solvers: ClassVar[tuple[str, ...]] = ("ddim",)
    timestep_spacing: ClassVar[str | None] = "trailing"

    def __init__(self, *args: Any, distilled_steps: int = 4, default_solver: str = "ddim", **kwargs: Any) -> None:
        super().__init__(*args, default_solver=default_solver, **kwargs)
        self.distilled_steps = check_int(distilled_steps, "method.distilled_steps", 1, self.num_timesteps)

    def default_steps(self, solver: str) -> int | None:
        return self.distilled_steps

    def sampler_name(self, solver: str) -> str:
        return self.name


class ProgressiveDistillation(nn.Module):
    """The Trainer's "method" during progressive distillation: ``compute_loss(student, x0)`` builds the target from
    the frozen teacher, so the Trainer, its EMA and its checkpoints run unchanged.

    The loss is in x space with truncated-SNR weighting ``max(SNR_t, 1) ||x_hat - x_tilde||^2`` (Sec. 4), since the
    epsilon loss vanishes at the noisy end where few-step samplers start. x_tilde is the x whose single DDIM step
    from z_t lands where two teacher steps z_t -> z_t' -> z_t'' do:

        x_tilde = (z_t'' - (sigma_t''/sigma_t) z_t) / (alpha_t'' - (sigma_t''/sigma_t) alpha_t)      (Alg. 2)

    At each round's end the callback bound by :meth:`bind` saves the student and returns its EMA weights, the next
    teacher. ``teacher_step`` is the teacher's deterministic solver (default DDIM). Settings: see
    conf/distill/progressive.yaml.

    Raises:
        ConfigError: naming the ``distill.*`` key that is out of range.
    """

    def __init__(self, method: GaussianDiffusion, teacher: nn.Module, *, start_steps: int = 64, end_steps: int = 4,
                 steps_per_round: int = 500, teacher_step: TeacherSolver = ddim_teacher_step) -> None:
        super().__init__()
        self.method = method
        self.num_timesteps = method.num_timesteps
        self.start_steps = check_int(start_steps, "distill.start_steps", 2, method.num_timesteps)
        self.end_steps = check_int(end_steps, "distill.end_steps", minimum=1)
        self.steps_per_round = check_int(steps_per_round, "distill.steps_per_round", minimum=1)
        ratio = self.start_steps // self.end_steps
        if self.start_steps % self.end_steps or ratio < 2 or ratio & (ratio - 1):
            raise ConfigError(
                f"distill.start_steps={start_steps} must be distill.end_steps={end_steps} times a power of two "
                f"(2, 4, 8, ...): each round halves the steps; e.g. distill.start_steps={self.end_steps * 16}"
            )
        self.teacher = teacher.eval().requires_grad_(False)
        self.teacher_step = teacher_step
        self.round = 0
        self._step_count: Callable[[], int] = lambda: 0
        self._round_end: RoundEnd | None = None

    # ----------------------------------------------------------------------------------------------------
    # Rounds
    # ----------------------------------------------------------------------------------------------------
    @property
    def student_steps(self) -> list[int]:
        """The student's sampling steps in each round: start_steps / 2, start_steps / 4, ..., end_steps."""
        steps, out = self.start_steps // 2, []
        while steps >= self.end_steps:
            out.append(steps)
            steps //= 2
        return out

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole distillation (the Trainer's ``max_steps``)."""
        return self.steps_per_round * len(self.student_steps)

    def bind(self, step_count: Callable[[], int], round_end: RoundEnd | None) -> None:
        """Tell the distillation how many optimizer steps are done and what to call at each round's end."""
        self._step_count, self._round_end = step_count, round_end

    def start_round(self, index: int, teacher_weights: dict[str, Any] | None) -> None:
        """Continue at round ``index`` with the teacher ``teacher_weights`` (None: keep the original teacher)."""
        self.round = index
        if teacher_weights is not None:
            self.teacher.load_state_dict(teacher_weights)

    def _follow_rounds(self) -> None:
        """Hand over to the next round(s) when the step count has passed their start."""
        current = min(self._step_count() // self.steps_per_round, len(self.student_steps) - 1)
        while self.round < current:
            weights = self._round_end(self.round) if self._round_end is not None else None
            self.start_round(self.round + 1, weights)

    # ----------------------------------------------------------------------------------------------------
    # Loss
    # ----------------------------------------------------------------------------------------------------
    def compute_loss(self, model: nn.Module, x0: torch.Tensor, *, t: torch.Tensor | None = None,
                     noise: torch.Tensor | None = None, **model_kwargs: Any) -> torch.Tensor:
        """The truncated-SNR-weighted x-space loss of ``model`` (the student) at this round's step count.

        ``t`` (validation's fixed draws, uniform over [0, T)) is mapped onto the student's steps; by default a
        step is drawn uniformly, as in the paper.
        """
        self._follow_rounds()
        steps = self.student_steps[self.round]
        if t is None:
            index = torch.randint(0, steps, (x0.shape[0],), device=x0.device)
        else:
            index = (t * steps) // self.num_timesteps
        grid = self.teacher_grid(steps).to(x0.device)
        t_start, t_mid, t_end = grid[2 * index], grid[2 * index + 1], grid[2 * index + 2]
        if noise is None:
            noise = torch.randn_like(x0)
        x_t = self.method.q_sample(x0, t_start, noise)
        kwargs = self.method.condition_kwargs(model, model_kwargs)  # the teacher sees the same (dropped) labels
        target = self.target_x0(x_t, t_start, t_mid, t_end, kwargs)
        x0_hat = self.method.predict_x0(x_t, t_start, model(x_t, t_start, **kwargs)).float()
        per_sample = F.mse_loss(x0_hat, target, reduction="none").flatten(1).mean(1)  # (B,)
        weight = self.method.snr.to(x0.device)[t_start].clamp(min=1.0)  # max(SNR_t, 1), truncated SNR
        return (weight.to(per_sample) * per_sample).mean()

    def teacher_grid(self, student_steps: int) -> torch.Tensor:
        """The teacher's 2N timesteps, descending, then -1 (data): ``(2N + 1,)``."""
        grid = spaced_timesteps(self.num_timesteps, 2 * student_steps, "trailing")
        if len(grid) != 2 * student_steps:
            raise ConfigError(f"distill.start_steps={self.start_steps}: {2 * student_steps} teacher steps do not fit "
                              f"in method.num_timesteps={self.num_timesteps}; lower distill.start_steps")
        return torch.tensor([*grid, -1])

    @torch.no_grad()
    def target_x0(
        self, x_t: torch.Tensor, t: torch.Tensor, t_mid: torch.Tensor, t_end: torch.Tensor, kwargs: dict[str, Any]
    ) -> torch.Tensor:
        """x_tilde (Alg. 2) from two teacher steps t -> t_mid -> t_end, in float32 whatever the autocast."""
        with torch.autocast(x_t.device.type, enabled=False):
            x_t = x_t.float()
            z_mid = self.teacher_step(self.method, self.teacher, x_t, t, t_mid, kwargs)
            z_end = self.teacher_step(self.method, self.teacher, z_mid, t_mid, t_end, kwargs)
            alpha_t = extract(self.method.sqrt_alphas_cumprod, t, x_t)
            sigma_t = extract(self.method.sqrt_one_minus_alphas_cumprod, t, x_t)
            abar_end = extract(self.method.alphas_cumprod, t_end, x_t, clean=1.0)
            ratio = (1.0 - abar_end).sqrt() / sigma_t  # sigma_t'' / sigma_t
            return (z_end - ratio * x_t) / (abar_end.sqrt() - ratio * alpha_t)

    def extra_repr(self) -> str:
        return (f"rounds={self.student_steps}, steps_per_round={self.steps_per_round}, "
                f"teacher_step={getattr(self.teacher_step, '__name__', self.teacher_step)}")


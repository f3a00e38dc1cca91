"""A consistency model (Song et al. 2023) on the discrete VP timesteps: the student of consistency distillation.

Notation map to the paper (which works in the VE/EDM variable x = x0 + sigma z):

    sigma_t = sqrt((1 - abar_t) / abar_t)      the paper's t (= sigma): x_t / sqrt(abar_t) = x0 + sigma_t z
    sigma_min = sigma_{t_min}, t_min = 0       the paper's epsilon: the trajectory's end point
    f(x_t, t) = c_skip(t) x_t / sqrt(abar_t) + c_out(t) D(x_t, t)                                  (eq. 5)
    c_skip(t) = sigma_data^2 / ((sigma_t - sigma_min)^2 + sigma_data^2)                    (Appendix C)

D is the network's denoised estimate (:meth:`GaussianDiffusion.predict_x0`), so a student copied from its
teacher starts as the teacher's denoiser; hence c_out = 1 - c_skip (the paper's c_out multiplies EDM's raw
output, whose skip term EDM adds). c_skip(t_min) = 1, c_out(t_min) = 0: f(x, t_min) = x / sqrt(abar_{t_min}),
the boundary condition (Sec. 3). In sigma space f is the denoiser the ``consistency`` solver steps.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from diffusion.methods.base import GridKind, Network, vp_scale
from diffusion.methods.gaussian import GaussianDiffusion, Timestep
from diffusion.runtime.checks import check_float, check_int


class Consistency(GaussianDiffusion):
    """A consistency model sampled by the ``consistency`` solver on the ``trailing`` grid (``distilled_steps``
    evaluations when ``sampler.steps=null``); its other settings are the teacher's :class:`GaussianDiffusion`.

    Raises:
        ConfigError: ``sigma_data <= 0`` or ``distilled_steps`` outside [1, T].
    """

    name = "consistency"
    solvers: ClassVar[tuple[str, ...]] = ("consistency",)
    grids: ClassVar[tuple[GridKind, ...]] = ("schedule",)
    timestep_spacing: ClassVar[str | None] = "trailing"

    def __init__(self, *args: Any, sigma_data: float = 0.5, distilled_steps: int = 1,
                 default_solver: str = "consistency", **kwargs: Any) -> None:
        super().__init__(*args, default_solver=default_solver, **kwargs)
        self.sigma_data = check_float(sigma_data, "method.sigma_data", minimum=0.0, inclusive=False)
        self.distilled_steps = check_int(distilled_steps, "method.distilled_steps", 1, self.num_timesteps)
        abar = self.alphas_cumprod  # float64
        c_skip = self.sigma_data**2 / ((self.sigmas - self.sigmas[0]) ** 2 + self.sigma_data**2)
        # c_skip / sqrt(abar) -> 0 as abar -> 0 (c_skip ~ abar there); written so abar = 0 gives 0, not 0/0.
        self._buffer("skip_scale", torch.where(abar > 0, c_skip / abar.sqrt(), torch.zeros_like(abar)))
        self._buffer("c_skip", c_skip)
        self._buffer("c_out", 1.0 - c_skip)

    def default_steps(self, solver: str) -> int | None:
        return self.distilled_steps

    def consistency_function(self, x_t: torch.Tensor, t: Timestep, model_output: torch.Tensor) -> torch.Tensor:
        """f(x_t, t) = c_skip x_t / sqrt(abar_t) + c_out D(x_t, t) (module docstring); unclipped."""
        denoised = self.predict_x0(x_t, t, model_output)
        return self.coefficient("skip_scale", t, x_t) * x_t + self.coefficient("c_out", t, x_t) * denoised

    def denoise(self, network: Network, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """f at the schedule level ``sigma`` for the sigma-space ``x`` (x_t = x / sqrt(1 + sigma^2)), clipped."""
        t = self.sigma_to_t(sigma)
        assert t == int(t), "a consistency model is evaluated on its schedule's own timesteps"
        x_t = x * vp_scale(sigma)
        t_batch = torch.full((x.shape[0],), t, device=x.device)  # (B,) float
        f = self.consistency_function(x_t, int(t), network(x_t, t_batch))
        return f.clamp(-1.0, 1.0) if self.clip_denoised else f

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, sigma_data={self.sigma_data}, distilled_steps={self.distilled_steps}"

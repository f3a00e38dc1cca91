"""Multistep consistency sampling (Song et al. 2023, Alg. 1) of a consistency model on the discrete VP timesteps.

Notation map to the paper (which works in the VE/EDM variable x = x0 + sigma z):

    sigma_t = sqrt((1 - abar_t) / abar_t)      the paper's t (= sigma): x_t / sqrt(abar_t) = x0 + sigma_t z
    sigma_min = sigma_{t_min}, t_min = 0       the paper's epsilon: the trajectory's end point
    f(x_t, t) = c_skip(t) x_t / sqrt(abar_t) + c_out(t) D(x_t, t)                                  (eq. 5)
    c_skip(t) = sigma_data^2 / ((sigma_t - sigma_min)^2 + sigma_data^2)                    (Appendix C)

D is the network's denoised estimate (:meth:`BaseMethod.predict_x0` of its epsilon/x0/v output), so a student
copied from a DDPM/DDIM teacher starts as the teacher's denoiser. The paper's c_out (eq. 5) multiplies EDM's raw
network output F, whose own skip term EDM adds; here D already is an x0 estimate, so c_out = 1 - c_skip: f
blends the (scaled) input with the denoiser. Both coefficients are smooth in sigma and c_skip(t_min) = 1,
c_out(t_min) = 0, so f(x, t_min) = x / sqrt(abar_{t_min}) exactly: the boundary condition (Sec. 3).
"""

from __future__ import annotations

from typing import Any

import torch

from diffusion.methods.base import BaseMethod, Timestep, TimestepSpacing, spaced_timesteps
from diffusion.runtime.checks import check_float, check_int


class Consistency(BaseMethod):
    """A consistency model on this repository's discrete timesteps; sampled in ``steps`` network evaluations.

    The trajectory always uses ``trailing`` spacing (it starts at T - 1, the noisiest step); each step maps x_t
    to the data estimate f(x_t, t), then re-noises it to the next timestep with fresh noise (Alg. 1; the last step
    returns f). ``sampler.eta`` is ignored.

    Args:
        schedule, num_timesteps, prediction, clip_denoised, loss_weighting, snr_gamma, cond_drop_prob: the
            Gaussian diffusion of the teacher (see :class:`BaseMethod`).
        sigma_data: the data's standard deviation in c_skip (0.5 as in the paper and EDM).
        distilled_steps: the step count ``sampler.steps=null`` uses (1: one-step generation).

    Raises:
        ConfigError: ``sigma_data <= 0`` or ``distilled_steps`` outside [1, T].
    """

    name = "consistency"

    def __init__(self, *args: Any, sigma_data: float = 0.5, distilled_steps: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sigma_data = check_float(sigma_data, "method.sigma_data", minimum=0.0, inclusive=False)
        self.default_steps = check_int(distilled_steps, "method.distilled_steps", 1, self.num_timesteps)
        abar = self.alphas_cumprod  # float64
        sigma = ((1.0 - abar) / abar).sqrt()  # inf where abar = 0 (zero terminal SNR)
        c_skip = self.sigma_data**2 / ((sigma - sigma[0]) ** 2 + self.sigma_data**2)
        # c_skip / sqrt(abar) -> 0 as abar -> 0 (c_skip ~ abar there); written so abar = 0 gives 0, not 0/0.
        self._buffer("skip_scale", torch.where(abar > 0, c_skip / abar.sqrt(), torch.zeros_like(abar)))
        self._buffer("c_skip", c_skip)
        self._buffer("c_out", 1.0 - c_skip)

    def consistency_function(self, x_t: torch.Tensor, t: Timestep, model_output: torch.Tensor) -> torch.Tensor:
        """f(x_t, t) = c_skip x_t / sqrt(abar_t) + c_out D(x_t, t) (module docstring); unclipped."""
        denoised = self.predict_x0(x_t, t, model_output)
        return self.coefficient("skip_scale", t, x_t) * x_t + self.coefficient("c_out", t, x_t) * denoised

    def timesteps(self, steps: int | None, spacing: TimestepSpacing = "trailing") -> list[int]:
        return spaced_timesteps(self.num_timesteps, steps or self.default_steps, "trailing")

    def step(
        self,
        x_t: torch.Tensor,
        t: int,
        t_prev: int,
        model_output: torch.Tensor,
        *,
        eta: float = 0.0,
        noise: torch.Tensor | None = None,
        state: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        """x0 = f(x_t, t); then x_{t_prev} = sqrt(abar_prev) x0 + sqrt(1 - abar_prev) z (Alg. 1, VP form)."""
        x0 = self.consistency_function(x_t, t, model_output)
        if self.clip_denoised:
            x0 = x0.clamp(-1.0, 1.0)
        if t_prev < 0:
            return x0
        if noise is None:
            noise = torch.randn_like(x_t)
        return self.coefficient("sqrt_alphas_cumprod", t_prev, x_t) * x0 + self.coefficient(
            "sqrt_one_minus_alphas_cumprod", t_prev, x_t
        ) * noise

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, sigma_data={self.sigma_data}, distilled_steps={self.default_steps}"

"""DPM-Solver++(2M) (Lu et al. 2022b, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
Models", Alg. 2): a second-order multistep solver of the probability-flow ODE in data-prediction form.

Notation map (paper -> this file; t is the 0-based step index of the schedule, t_prev = -1 is clean data):

    alpha_t  = sqrt(abar_t)       = ``sqrt_alphas_cumprod[t]``            (alpha_{-1} = 1)
    sigma_t  = sqrt(1 - abar_t)   = ``sqrt_one_minus_alphas_cumprod[t]``  (sigma_{-1} = 0)
    lambda_t = log(alpha_t / sigma_t), half the log-SNR; it increases as t decreases
    x_theta  = the network's x0 prediction, whatever the prediction target (clamped when ``clip_denoised``)
    h_i      = lambda_{t_i} - lambda_{t_{i-1}} > 0, the step in lambda

The exact solution from s to t in data-prediction form (Sec. 4.1) is
    x_t = (sigma_t / sigma_s) x_s + sigma_t * int_{lambda_s}^{lambda_t} e^lambda x_theta(x_lambda, lambda) d lambda.
Holding x_theta constant gives the first-order step (DPM-Solver++1, identical to DDIM with eta = 0)
    x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) D,   D = x_theta(x_s, s);
Alg. 2 replaces D by a backward difference of the last two data predictions (multistep, no extra model call):
    r_i = h_{i-1} / h_i,   D_i = (1 + 1 / (2 r_i)) x_theta(t_{i-1}) - 1 / (2 r_i) x_theta(t_{i-2}).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from diffusion.methods.base import BaseMethod, TimestepSpacing, spaced_timesteps


class DPMSolver(BaseMethod):
    """DPM-Solver++(2M): deterministic, second order, one network call per step (``method=dpm_solver``).

    It shares the schedule, ``num_timesteps`` and ``prediction`` of DDPM/DDIM, so any checkpoint of theirs samples
    with it. The trajectory is ``spaced_timesteps(T, steps, spacing)`` with the spacing the sampler passes;
    ``sampler.timestep_spacing=trailing`` (or ``linspace``) is recommended, because ``leading`` never visits
    t = T - 1 and so starts from pure noise at a timestep whose marginal is not pure noise (Lin et al. 2024).
    ``sampler.eta`` is ignored: the solver integrates the probability-flow ODE. ``steps=None`` takes
    :attr:`default_steps` (20; 10-20 suffice, Lu et al. 2022).

    Steps (Alg. 2): the first step is first order (no earlier prediction yet); every later step is second order,
    reading the previous data prediction from the per-trajectory ``state``; the final step, to t_prev = -1
    where sigma = 0 and lambda = +inf, is first order and so returns the current x0 prediction exactly
    (e^{-h} = 0, alpha = 1). This is the reference scheduler's ``final_sigmas_type="zero"`` behaviour and DDIM's
    last step. Without a ``state`` dict every step is first order, i.e. DDIM.
    """

    name = "dpm_solver"
    default_steps = 20  # sampler.steps=null

    def timesteps(self, steps: int | None, spacing: TimestepSpacing = "leading") -> list[int]:
        return spaced_timesteps(self.num_timesteps, steps or min(self.default_steps, self.num_timesteps), spacing)

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
        """x_t -> x_{t_prev}; ``state`` keeps the last data prediction (``x0``), its ``lambda`` and ``t_next``."""
        t, t_prev = int(t), int(t_prev)
        x0 = self._denoised(x_t, self._as_batch(t, x_t), model_output)  # x_theta(x_t, t), (B, ...)
        if t_prev < 0:
            return x0  # first order into sigma = 0: (0 / sigma_t) x_t + 1 * (1 - e^{-inf}) x0
        alpha_t, sigma_t = self._alpha_sigma(t)
        alpha_next, sigma_next = self._alpha_sigma(t_prev)
        lambda_t, lambda_next = half_log_snr(alpha_t, sigma_t), half_log_snr(alpha_next, sigma_next)
        h = lambda_next - lambda_t
        direction = self._multistep_direction(x0, t, lambda_t, h, state)
        if state is not None:
            state.update(x0=x0, lam=lambda_t, t_next=t_prev)
        # x_{t_prev} = (sigma_next / sigma_t) x_t - alpha_next (e^{-h} - 1) D   (Alg. 2, the x~_{t_i} update)
        return (sigma_next / sigma_t) * x_t + (alpha_next * -math.expm1(-h)) * direction

    def _multistep_direction(
        self, x0: torch.Tensor, t: int, lambda_t: float, h: float, state: dict[str, Any] | None
    ) -> torch.Tensor:
        """D_i of Alg. 2: x0 on the first step, else the second-order combination with the previous x0."""
        if not state:
            return x0
        assert state["t_next"] == t, "a DPM-Solver state dict belongs to one trajectory; the sampler makes a new one"
        h_last = lambda_t - state["lam"]  # h_{i-1} > 0; +inf when the last step started at abar = 0 (zero SNR)
        half_inv_r = h / (2.0 * h_last)  # 1 / (2 r_i) with r_i = h_{i-1} / h_i; 0 when h_{i-1} = inf
        return (1.0 + half_inv_r) * x0 - half_inv_r * state["x0"]

    def _alpha_sigma(self, t: int) -> tuple[float, float]:
        """(alpha_t, sigma_t) as float64 Python numbers; t = -1 is clean data (1, 0)."""
        if t < 0:
            return 1.0, 0.0
        return float(self.sqrt_alphas_cumprod[t]), float(self.sqrt_one_minus_alphas_cumprod[t])

    def needs_noise(self, eta: float) -> bool:
        return False


def half_log_snr(alpha: float, sigma: float) -> float:
    """lambda = log(alpha / sigma), with the limits -inf at alpha = 0 (zero-terminal SNR) and +inf at sigma = 0."""
    if alpha == 0.0:
        return -math.inf
    if sigma == 0.0:
        return math.inf
    return math.log(alpha) - math.log(sigma)

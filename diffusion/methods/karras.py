"""Sigma-space ODE/SDE solvers of Karras et al. 2022 ("Elucidating the Design Space of Diffusion-Based Generative
Models", EDM) and Lu et al. 2022b (DPM-Solver++), written against a denoiser callable.

Notation map (paper -> code):

    x                 the noisy sample in sigma space, x = y + sigma * n  (EDM eq. 1 with s(t) = 1, sigma(t) = t)
    D(x; sigma)       ``denoise(x, sigma)``: the denoiser's estimate of the clean sample y, ``(B, ...)``
    sigma_i           ``sigmas[i]``, descending, ``sigmas[N] = 0`` (EDM eq. 5)
    dx/dsigma         (x - D(x; sigma)) / sigma, the probability-flow ODE (EDM eq. 3 with s = 1, sigma(t) = t)

Every solver is a function ``(denoise, x, sigmas, ...) -> x_0`` of 20-30 lines, one docstring line naming its
paper's algorithm; ``x`` enters already scaled to ``sigmas[0]``. Guidance (classifier-free or autoguidance) is
inside ``denoise``, so every solver gets it. ``callback(i, x)`` sees x before step i (trajectory pictures).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal, get_args

import torch

Denoiser = Callable[[torch.Tensor, float], torch.Tensor]  # D(x; sigma): (B, ...), float -> (B, ...)
NoiseSource = Callable[[], torch.Tensor]  # a fresh standard-normal tensor shaped like x
Callback = Callable[[int, torch.Tensor], None]
SolverName = Literal["euler", "heun", "dpmpp_2m"]
SOLVER_NAMES: tuple[str, ...] = get_args(SolverName)


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> list[float]:
    """EDM eq. 5: sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho for
    i < N, then sigma_N = 0. Returns ``steps + 1`` descending float64 Python numbers.

    rho = 7 spends the steps near sigma_min, where the ODE curves most (EDM Sec. 3, Fig. 13); ``steps = 1``
    gives [sigma_max, 0].
    """
    assert steps >= 1 and 0 < sigma_min <= sigma_max and rho > 0, (steps, sigma_min, sigma_max, rho)
    if steps == 1:
        return [float(sigma_max), 0.0]
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    max_inv, min_inv = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    sigmas = (max_inv + ramp * (min_inv - max_inv)) ** rho
    return sigmas.tolist() + [0.0]


def solver_nfe(solver: SolverName, steps: int) -> int:
    """Denoiser evaluations for ``steps`` steps: Heun's last step (to sigma = 0) is an Euler step, so 2N - 1
    (EDM Alg. 1: 18 steps = 35 NFE); Euler and DPM-Solver++(2M) call the denoiser once per step."""
    return 2 * steps - 1 if solver == "heun" else steps


def _ode_derivative(x: torch.Tensor, denoised: torch.Tensor, sigma: float) -> torch.Tensor:
    return (x - denoised) / sigma  # dx/dsigma (EDM eq. 3, Alg. 1 line 4)


@torch.no_grad()
def sample_euler(
    denoise: Denoiser, x: torch.Tensor, sigmas: Sequence[float], callback: Callback | None = None
) -> torch.Tensor:
    """Euler's method on the probability-flow ODE (EDM Alg. 1 without the second-order correction)."""
    for i in range(len(sigmas) - 1):
        if callback is not None:
            callback(i, x)
        d = _ode_derivative(x, denoise(x, sigmas[i]), sigmas[i])
        x = x + (sigmas[i + 1] - sigmas[i]) * d
    return x


@torch.no_grad()
def sample_heun(
    denoise: Denoiser,
    x: torch.Tensor,
    sigmas: Sequence[float],
    callback: Callback | None = None,
    *,
    noise: NoiseSource | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """EDM Alg. 2: Heun's second-order method with churn; ``s_churn = 0`` is the deterministic Alg. 1.

    Before step i, noise raises sigma_i to sigma_hat = (1 + gamma_i) sigma_i, gamma_i = min(S_churn / N,
    sqrt(2) - 1) for sigma_i in [S_tmin, S_tmax] (line 5); x_hat = x + sqrt(sigma_hat^2 - sigma_i^2) S_noise eps
    (line 6). The Euler step to sigma_{i+1} (lines 7-8) is corrected by the trapezoidal rule unless
    sigma_{i+1} = 0 (lines 9-11).
    """
    steps = len(sigmas) - 1
    for i in range(steps):
        if callback is not None:
            callback(i, x)
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        gamma = min(s_churn / steps, math.sqrt(2) - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (1 + gamma)
        if gamma > 0:
            assert noise is not None, "sample_heun with s_churn > 0 needs a noise source"
            x = x + math.sqrt(sigma_hat**2 - sigma**2) * s_noise * noise()
        d = _ode_derivative(x, denoise(x, sigma_hat), sigma_hat)
        x_next = x + (sigma_next - sigma_hat) * d
        if sigma_next != 0:
            d_next = _ode_derivative(x_next, denoise(x_next, sigma_next), sigma_next)
            x_next = x + (sigma_next - sigma_hat) * (0.5 * d + 0.5 * d_next)
        x = x_next
    return x


@torch.no_grad()
def sample_dpmpp_2m(
    denoise: Denoiser, x: torch.Tensor, sigmas: Sequence[float], callback: Callback | None = None
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2) in sigma space, first order on the first and the last step.

    With alpha = 1 (sigma space), lambda = -log(sigma) and h = lambda_{i+1} - lambda_i, the data-prediction
    update is x_{i+1} = (sigma_{i+1} / sigma_i) x_i - (e^{-h} - 1) D_i, where D_i is the denoised estimate
    (first order) or (1 + 1/(2r)) D(x_i) - 1/(2r) D(x_{i-1}) with r = h_{i-1} / h_i (second order). The final
    step, to sigma = 0 (h = inf), is first order and returns D(x_{N-1}) exactly: a second-order step there
    amplifies the previous estimate's error and is what makes 5-step samples blow up (k-diffusion,
    diffusers' ``lower_order_final``).
    """
    previous: torch.Tensor | None = None  # D(x_{i-1}; sigma_{i-1})
    h_last = 0.0
    for i in range(len(sigmas) - 1):
        if callback is not None:
            callback(i, x)
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(x, sigma)
        if sigma_next == 0:
            return denoised
        h = math.log(sigma) - math.log(sigma_next)
        direction = denoised
        if previous is not None:
            half_inv_r = h / (2 * h_last)  # 1 / (2 r)
            direction = (1 + half_inv_r) * denoised - half_inv_r * previous
        x = (sigma_next / sigma) * x - math.expm1(-h) * direction
        previous, h_last = denoised, h
    return x


SOLVERS: dict[str, Callable[..., torch.Tensor]] = {
    "euler": sample_euler,
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
}

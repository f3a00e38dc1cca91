"""Solvers: one function per sampling algorithm, each stepping a denoiser D(x; sigma) down a grid of noise levels.

Notation map (Karras et al. 2022, "EDM" -> code):

    x                 the sample in sigma space, x = y + sigma n (EDM eq. 1); a Gaussian diffusion's x_t is
                      sqrt(abar_t) x with sigma_t = sqrt((1 - abar_t) / abar_t) (Table 1, "VP")
    D(x; sigma)       ``denoise(x, sigma)``: the method's clean-sample estimate, ``(B, ...)``
    sigma_i           ``sigmas[i]``, descending, ``sigmas[N] = 0`` (:mod:`diffusion.sampling.grids`)
    dx/dsigma         (x - D(x; sigma)) / sigma, the probability-flow ODE (EDM eq. 3)

Every solver is ``(denoise, x, sigmas, noise, callback, **options) -> x_0`` (x enters scaled to ``sigmas[0]``;
guidance lives inside ``denoise``). A flow is integrated in time instead by the ``flow_*`` solvers, with the
velocity u(x_t, t) in place of D and times ascending from noise (0) to data (1); :func:`solver_for` picks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from diffusion.methods.base import GridKind, noise_estimate

Denoiser = Callable[[torch.Tensor, float], torch.Tensor]  # D(x; sigma): (B, ...), float -> (B, ...)
NoiseSource = Callable[[], torch.Tensor]  # a fresh standard-normal tensor shaped like x
Callback = Callable[[int, torch.Tensor], None]


def _no_callback(i: int, x: torch.Tensor) -> None:
    pass


@torch.no_grad()
def ddim(denoise: Denoiser, x: torch.Tensor, sigmas: Sequence[float], noise: NoiseSource,
         callback: Callback = _no_callback, *, eta: float = 0.0) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12 with sigma_t of eq. 16 scaled by eta), in sigma space.

    sigma_up = eta sigma' sqrt(1 - (sigma'/sigma)^2), sigma_down = sqrt(sigma'^2 - sigma_up^2), and
    x' = D + sigma_down (x - D) / sigma + sigma_up z. eta = 0: deterministic DDIM (= Euler); eta = 1: DDPM's step.
    """
    for i in range(len(sigmas) - 1):
        callback(i, x)
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(x, sigma)
        sigma_up = eta * sigma_next * math.sqrt(max(0.0, 1 - (sigma_next / sigma) ** 2))
        sigma_down = math.sqrt(max(0.0, sigma_next**2 - sigma_up**2))
        step_noise = noise() if eta > 0 else None
        x = denoised + sigma_down * noise_estimate(x, denoised, sigma)
        if step_noise is not None:
            x = x + sigma_up * step_noise
    return x


def ddpm(denoise: Denoiser, x: torch.Tensor, sigmas: Sequence[float], noise: NoiseSource,
         callback: Callback = _no_callback) -> torch.Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Alg. 2; the posterior of eqs. 6-7) over every schedule level."""
    return ddim(denoise, x, sigmas, noise, callback, eta=1.0)


def euler(denoise: Denoiser, x: torch.Tensor, sigmas: Sequence[float], noise: NoiseSource,
          callback: Callback = _no_callback) -> torch.Tensor:
    """Euler's method on the probability-flow ODE (EDM Alg. 1 without the correction): DDIM at eta = 0."""
    return ddim(denoise, x, sigmas, noise, callback, eta=0.0)


@torch.no_grad()
def heun(denoise: Denoiser, x: torch.Tensor, sigmas: Sequence[float], noise: NoiseSource,
         callback: Callback = _no_callback, *, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
         s_noise: float = 1.0) -> torch.Tensor:
    """EDM Alg. 2: Heun's second-order method with churn; ``s_churn = 0`` is the deterministic Alg. 1.

    Before step i, noise raises sigma_i to sigma_hat = (1 + gamma_i) sigma_i, gamma_i = min(S_churn / N,
    sqrt(2) - 1) for sigma_i in [S_tmin, S_tmax] (line 5); x_hat = x + sqrt(sigma_hat^2 - sigma_i^2) S_noise eps
    (line 6). The Euler step to sigma_{i+1} (lines 7-8) is corrected by the trapezoidal rule unless
    sigma_{i+1} = 0 (lines 9-11).
    """
    steps = len(sigmas) - 1
    for i in range(steps):
        callback(i, x)
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        gamma = min(s_churn / steps, math.sqrt(2) - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (1 + gamma)
        if gamma > 0:
            x = x + math.sqrt(sigma_hat**2 - sigma**2) * s_noise * noise()
        d = noise_estimate(x, denoise(x, sigma_hat), sigma_hat)
        x_next = x + (sigma_next - sigma_hat) * d
        if sigma_next != 0:
            d_next = noise_estimate(x_next, denoise(x_next, sigma_next), sigma_next)
            x_next = x + (sigma_next - sigma_hat) * (0.5 * d + 0.5 * d_next)
        x = x_next
    return x


@torch.no_grad()
def dpmpp_2m(denoise: Denoiser, x: torch.Tensor, sigmas: Sequence[float], noise: NoiseSource,
             callback: Callback = _no_callback) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2) in sigma space, first order on the first and the last step.

    With lambda = -log(sigma), h = lambda_{i+1} - lambda_i: x_{i+1} = (sigma_{i+1} / sigma_i) x_i - (e^{-h} - 1) D_i,
    D_i = (1 + 1/(2r)) D(x_i) - 1/(2r) D(x_{i-1}), r = h_{i-1} / h_i (D(x_i) on the first step). The last step returns
    D(x_{N-1}) (diffusers' ``lower_order_final``); a step from sigma = inf is D + sigma_{i+1} n.
    """
    previous: torch.Tensor | None = None  # D(x_{i-1}; sigma_{i-1})
    h_last = 0.0
    for i in range(len(sigmas) - 1):
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
        if math.isinf(sigma):
            x = direction + sigma_next * x  # x holds n at sigma = inf
        else:
            x = (sigma_next / sigma) * x - math.expm1(-h) * direction
        previous, h_last = denoised, h
    return x


@torch.no_grad()
def consistency(denoise: Denoiser, x: torch.Tensor, sigmas: Sequence[float], noise: NoiseSource,
                callback: Callback = _no_callback) -> torch.Tensor:
    """Multistep consistency sampling (Song et al. 2023, Alg. 1): y = f(x; sigma), then x = y + sigma' z.

    ``denoise`` is the consistency function f. Noise is drawn at every step (the last one's is unused).
    """
    for i in range(len(sigmas) - 1):
        callback(i, x)
        sample = denoise(x, sigmas[i])
        step_noise = noise()
        if sigmas[i + 1] == 0:
            return sample
        x = sample + sigmas[i + 1] * step_noise
    return x


# --------------------------------------------------------------------------------------------------------
# Time-grid solvers: a flow's ODE dx_t / dt = u(x_t, t) (Lipman et al. 2023, eq. 1), t from noise (0) to data (1)
# --------------------------------------------------------------------------------------------------------
class FlowField(NamedTuple):
    """What a time-grid solver integrates: the velocity u(x_t, t) (guidance inside), the path's coefficients at t
    (for the SDE's score), and a one-step generator's average velocity u(x_t, t, t') (None without one).
    """

    velocity: Callable[[torch.Tensor, float], torch.Tensor]
    path: Callable[[float], tuple[torch.Tensor, ...]]
    average: Callable[[torch.Tensor, float, float], torch.Tensor] | None = None


@torch.no_grad()
def flow_euler(flow: FlowField, x: torch.Tensor, times: Sequence[float], noise: NoiseSource,
               callback: Callback = _no_callback) -> torch.Tensor:
    """Euler's method on the flow ODE, x_{i+1} = x_i + (t_{i+1} - t_i) u(x_i, t_i) (Liu et al. 2023, Alg. 1)."""
    for i in range(len(times) - 1):
        callback(i, x)
        x = x + (times[i + 1] - times[i]) * flow.velocity(x, times[i])
    return x


@torch.no_grad()
def flow_heun(flow: FlowField, x: torch.Tensor, times: Sequence[float], noise: NoiseSource,
              callback: Callback = _no_callback) -> torch.Tensor:
    """Heun's method (the trapezoidal rule on an Euler predictor) on the flow ODE; the step onto the data (t = 1)
    stays an Euler step, as in EDM Alg. 1, where x0 and noise predictions are singular: 2N - 1 evaluations."""
    for i in range(len(times) - 1):
        callback(i, x)
        h = times[i + 1] - times[i]
        v = flow.velocity(x, times[i])
        x_next = x + h * v
        if times[i + 1] < 1:
            x_next = x + h * 0.5 * (v + flow.velocity(x_next, times[i + 1]))
        x = x_next
    return x


@torch.no_grad()
def flow_midpoint(flow: FlowField, x: torch.Tensor, times: Sequence[float], noise: NoiseSource,
                  callback: Callback = _no_callback) -> torch.Tensor:
    """The explicit midpoint method (second-order Runge-Kutta): x_{i+1} = x_i + h u(x_i + h/2 u(x_i, t_i),
    t_i + h/2); two evaluations a step, none at t = 1."""
    for i in range(len(times) - 1):
        callback(i, x)
        h = times[i + 1] - times[i]
        x_mid = x + 0.5 * h * flow.velocity(x, times[i])
        x = x + h * flow.velocity(x_mid, times[i] + 0.5 * h)
    return x


@torch.no_grad()
def dopri5(flow: FlowField, x: torch.Tensor, times: Sequence[float], noise: NoiseSource,
           callback: Callback = _no_callback, *, atol: float = 1e-5, rtol: float = 1e-5) -> torch.Tensor:
    """Dormand-Prince 5(4) with adaptive steps (torchdiffeq's ``dopri5``), tolerances ``atol``/``rtol`` on the
    whole batch's error norm: its steps, so its samples, depend on the batch it shares (the fixed-step solvers'
    do not). ``times`` are only where ``callback`` sees x; its evaluations are counted by the sampler."""
    from torchdiffeq import odeint  # imported on use: the other solvers do not need it

    def field(t: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        return flow.velocity(x_t, float(t))

    grid = torch.tensor(list(times), dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    trajectory = odeint(field, x, grid.to(x.device), method="dopri5", atol=atol, rtol=rtol)  # (N + 1, B, ...)
    for i in range(len(times) - 1):
        callback(i, trajectory[i])
    return trajectory[-1]


@torch.no_grad()
def euler_maruyama(flow: FlowField, x: torch.Tensor, times: Sequence[float], noise: NoiseSource,
                   callback: Callback = _no_callback, *, diffusion: float = 1.0) -> torch.Tensor:
    """SiT's SDE sampler (Ma et al. 2024, eq. 8): dx = [u + w_t s / 2] dt + sqrt(w_t) dW, the ODE's marginals, in
    Euler-Maruyama steps; s = -n_hat / sigma_t from the velocity, w_t = ``diffusion`` sigma_t, so the drift is
    u - diffusion n_hat / 2. The last step is a deterministic Euler step (SiT's ``Mean``).
    """
    for i in range(len(times) - 1):
        callback(i, x)
        t, h = times[i], times[i + 1] - times[i]
        v = flow.velocity(x, t)
        step_noise = noise()
        if i == len(times) - 2:
            return x + h * v
        alpha, sigma, d_alpha, d_sigma = (float(c) for c in flow.path(t))
        noise_hat = (alpha * v - d_alpha * x) / (alpha * d_sigma - sigma * d_alpha)
        x = x + h * (v - 0.5 * diffusion * noise_hat) + math.sqrt(diffusion * sigma * h) * step_noise
    return x


@torch.no_grad()
def average_velocity_steps(flow: FlowField, x: torch.Tensor, times: Sequence[float], noise: NoiseSource,
                           callback: Callback = _no_callback) -> torch.Tensor:
    """MeanFlow's 1- and k-step sampling (Geng et al. 2025, Alg. 2 and eq. 5) and a shortcut model's (Frans et al.
    2024, eq. 3): x_{i+1} = x_i + (t_{i+1} - t_i) u(x_i, t_i, t_{i+1}), the average velocity over each interval;
    one MeanFlow step is the paper's z_0 = z_1 - u(z_1, 0, 1) (its time runs from data to noise)."""
    assert flow.average is not None, "this solver needs a method with an average velocity"
    for i in range(len(times) - 1):
        callback(i, x)
        x = x + (times[i + 1] - times[i]) * flow.average(x, times[i], times[i + 1])
    return x


class Solver(NamedTuple):
    """A solver, the grid it walks, its default ``sampler.steps`` (None: every schedule level), its denoiser
    evaluations for N steps, and the sampler settings it takes."""

    function: Callable[..., torch.Tensor]
    grid: GridKind
    default_steps: int | None
    nfe: Callable[[int], int] | None  # None: adaptive, the sampler counts the evaluations
    options: tuple[str, ...] = ()


def _one_per_step(steps: int) -> int:
    return steps


SOLVERS: dict[str, Solver] = {
    "ddpm": Solver(ddpm, "schedule", None, _one_per_step),
    "ddim": Solver(ddim, "schedule", 50, _one_per_step, ("eta",)),  # DDIM paper's Table 1 middle
    "dpm_solver": Solver(dpmpp_2m, "schedule", 20, _one_per_step),  # 10-20 suffice (Lu et al. 2022)
    "euler": Solver(euler, "karras", 18, _one_per_step),  # EDM's CIFAR-10 setting
    # Heun's last step (to sigma = 0) is an Euler step: 2N - 1 evaluations (EDM Alg. 1: 18 steps = 35 NFE).
    "heun": Solver(heun, "karras", 18, lambda steps: 2 * steps - 1, ("s_churn", "s_tmin", "s_tmax", "s_noise")),
    "dpmpp_2m_karras": Solver(dpmpp_2m, "karras", 18, _one_per_step),
    "consistency": Solver(consistency, "schedule", 1, _one_per_step),
}


def _two_per_step_but_the_last(steps: int) -> int:
    return 2 * steps - 1


TIME_SOLVERS: dict[str, Solver] = {
    "euler": Solver(flow_euler, "time", 16, _one_per_step),
    "heun": Solver(flow_heun, "time", 18, _two_per_step_but_the_last),
    "midpoint": Solver(flow_midpoint, "time", 18, lambda steps: 2 * steps),
    "dopri5": Solver(dopri5, "time", 1, None, ("atol", "rtol")),  # steps: only where the trajectory is recorded
    "euler_maruyama": Solver(euler_maruyama, "time", 50, _one_per_step, ("diffusion",)),
    "meanflow": Solver(average_velocity_steps, "time", 1, _one_per_step),  # one step: what it is trained for
    "shortcut": Solver(average_velocity_steps, "time", 1, _one_per_step),  # 1, 2, 4, ..., method.max_steps
}
SOLVER_NAMES: tuple[str, ...] = tuple(dict.fromkeys([*SOLVERS, *TIME_SOLVERS]))  # sampler.solver's choices


def solver_for(name: str, grids: Sequence[GridKind]) -> Solver:
    """The solver ``name`` for a method offering ``grids``: on a flow (a ``time`` grid) the time-grid solver of
    that name where there is one (``euler``, ``heun``, ...), else the sigma-space one (DDIM, DPM-Solver++...)."""
    if "time" in grids and name in TIME_SOLVERS:
        return TIME_SOLVERS[name]
    return SOLVERS[name]

"""The descending noise levels a solver visits: a schedule's (spaced) timesteps, Karras sigmas, or a flow's times.

Every grid is sigmas ending in 0; a sample starts at ``start_scale * n`` (DDPM/DDIM's x_T = n on the schedule,
EDM's sigma_max n on Karras sigmas). ``labels`` name steps in trajectory pictures. A flow's ``time`` grid also
holds ascending times t (noise 0, data 1), and its solvers step x_t, not sigma-space x.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from diffusion.methods.base import BaseMethod, GridKind
from diffusion.methods.schedules import TimestepSpacing, spaced_timesteps
from diffusion.runtime.checks import ConfigError, check_int


class Grid(NamedTuple):
    sigmas: list[float]  # (N + 1,) descending, sigmas[N] = 0
    labels: list[int]  # (N,) one per step
    start_scale: float  # x = start_scale * n before the first step
    times: list[float] | None = None  # (N + 1,) ascending flow times t of a ``time`` grid (x is then x_t)


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> list[float]:
    """EDM eq. 5: sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho for
    i < N, then 0: ``steps + 1`` descending float64 numbers. rho = 7 spends the steps near sigma_min, where the
    ODE curves most (EDM Sec. 3); ``steps = 1`` gives [sigma_max, 0]."""
    assert steps >= 1 and 0 < sigma_min <= sigma_max and rho > 0, (steps, sigma_min, sigma_max, rho)
    if steps == 1:
        return [float(sigma_max), 0.0]
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    max_inv, min_inv = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    sigmas = (max_inv + ramp * (min_inv - max_inv)) ** rho
    return sigmas.tolist() + [0.0]


def build_grid(method: BaseMethod, kind: GridKind, steps: int | None, spacing: TimestepSpacing,
               rho: float = 7.0) -> Grid:
    """The grid of ``kind`` for ``method`` (``steps=None``: every schedule level, DDPM's); a student's own
    ``method.timestep_spacing`` overrides ``spacing``.

    Raises:
        ConfigError: naming ``sampler.solver`` when Karras sigmas would need sigma_max = inf (zero terminal SNR).
    """
    assert kind in method.grids, f"{method.name} lists a solver on {kind} grids but offers {method.grids}"
    if kind == "schedule":
        levels = method.schedule_sigmas().tolist()
        timesteps = (list(range(len(levels) - 1, -1, -1)) if steps is None
                     else spaced_timesteps(len(levels), steps, method.timestep_spacing or spacing))
        sigmas = [levels[t] for t in timesteps] + [0.0]
        start = 1.0 if math.isinf(sigmas[0]) else math.sqrt(1 + sigmas[0] ** 2)  # at inf x holds n itself
        return Grid(sigmas, timesteps, start)
    if kind == "time":
        return time_grid(method, check_int(steps, "sampler.steps", minimum=1))
    if math.isinf(method.sigma_max):
        raise ConfigError("sampler.solver on Karras sigmas needs a finite sigma_max: set "
                          "schedule.zero_terminal_snr=false or use sampler.solver=ddim")
    check_int(steps, "sampler.steps", minimum=1)
    sigmas = karras_sigmas(steps, method.sigma_min, method.sigma_max, rho)
    return Grid(sigmas, list(range(steps - 1, -1, -1)), sigmas[0])


def time_grid(method: BaseMethod, steps: int) -> Grid:
    """A flow's ``steps + 1`` times (its spacing and shift) with their sigma-space levels sigma_t / alpha_t (inf at
    alpha = 0; 0 at the data end t = 1); x starts at x_t = sigma_{t_0} n."""
    times = method.sampling_times(steps)
    alphas, sigmas = (c.tolist() for c in method.path_coefficients(torch.tensor(times, dtype=torch.float64))[:2])
    levels = [math.inf if a == 0 else s / a for a, s in zip(alphas, sigmas)]
    levels[-1] = 0.0  # t = 1: the data (cos(pi / 2) is 6e-17, not 0)
    return Grid(levels, list(range(steps - 1, -1, -1)), sigmas[0], times)

"""Straightness of a flow's sampling paths (Liu et al. 2023, rectified flow, Sec. 2.3 / eq. 5):

    S(Z) = E integral_0^1 ||(Z_1 - Z_0) - u(Z_t, t)||^2 dt

along the model's own Euler trajectories from noise Z_0 to sample Z_1, divided by D. S = 0 exactly when every
trajectory is straight at constant speed, which one Euler step integrates exactly.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from diffusion.methods.base import BaseMethod, Network
from diffusion.runtime.checks import ConfigError, check_int


class Straightness(NamedTuple):
    """S per trajectory ``(N,)``, their mean and its standard error."""

    per_sample: torch.Tensor
    mean: float
    standard_error: float


@torch.no_grad()
def straightness(method: BaseMethod, network: Network, noise: torch.Tensor, steps: int = 100) -> Straightness:
    """S(Z) of the trajectories started from ``noise`` ``(N, ...)`` (x_{t_0} = sigma_{t_0} n), by ``steps`` Euler
    steps in uniform t (no shift), the integral a left Riemann sum over the same steps.

    Raises:
        ConfigError: naming ``evaluator.straightness`` for a method that is not a flow (no velocity in time), or
            ``evaluator.straightness_steps`` < 1.
    """
    if "time" not in method.grids:
        raise ConfigError(f"evaluator.straightness=true needs a flow (method=flow_matching); method {method.name} "
                          "has no velocity in time")
    steps = check_int(steps, "evaluator.straightness_steps", minimum=1)
    start = method.sampling_times(1)[0]
    times = torch.linspace(start, 1.0, steps + 1, dtype=torch.float64).tolist()
    x = noise * float(method.path_coefficients(start)[1])
    velocities, widths = [], []
    for i in range(steps):
        v = method.velocity(network, x, times[i])
        widths.append(times[i + 1] - times[i])
        velocities.append(v)
        x = x + widths[-1] * v
    displacement = sum(h * v for h, v in zip(widths, velocities))  # Z_1 - Z_0, (N, ...)
    per_sample = sum(h * (displacement - v).pow(2).flatten(1).mean(1) for h, v in zip(widths, velocities))
    n = per_sample.numel()
    error = float(per_sample.std() / math.sqrt(n)) if n > 1 else math.nan
    return Straightness(per_sample, float(per_sample.mean()), error)

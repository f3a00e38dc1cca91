"""Noise schedules: pure float64 functions ``(num_timesteps, **params) -> betas``.

Each returns ``betas`` of shape ``(num_timesteps,)`` with ``betas[i]`` the variance added going from step ``i``
to ``i + 1`` (0-based: ``betas[0]`` is beta_1 of Ho et al. 2020). Everything derived from them (abar_t, the
posterior coefficients) is computed once, in :class:`diffusion.methods.base.BaseMethod`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from diffusion.validation import ConfigError, check_float, check_int

Schedule = Callable[[int], torch.Tensor]


def linear_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Linearly spaced betas (Ho et al. 2020, Sec. 4: 1e-4 to 0.02 over T = 1000).

    The endpoints are used as given for every T; with few steps raise ``beta_end`` so that abar_T stays near 0.
    """
    check_int(num_timesteps, "method.num_timesteps", minimum=1)
    check_float(beta_start, "schedule.beta_start", 0.0, 1.0, inclusive=False)
    check_float(beta_end, "schedule.beta_end", 0.0, 1.0, inclusive=False)
    if beta_end < beta_start:
        raise ConfigError(f"schedule.beta_end ({beta_end}) must be >= schedule.beta_start ({beta_start})")
    return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Cosine schedule (Nichol & Dhariwal 2021, eq. 17).

    abar(u) = cos^2((u + s) / (1 + s) * pi / 2) for u = i / T, and beta_i = min(1 - abar((i+1)/T) / abar(i/T),
    max_beta); the clip keeps the last steps from being singular near u = 1.
    """
    check_int(num_timesteps, "method.num_timesteps", minimum=1)
    check_float(s, "schedule.s", minimum=0.0)
    check_float(max_beta, "schedule.max_beta", 0.0, 1.0, inclusive=False)
    u = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    alpha_bar = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
    return betas.clamp(max=max_beta)


def sigmoid_betas(
    num_timesteps: int, start: float = -3.0, end: float = 3.0, tau: float = 1.0, max_beta: float = 0.999
) -> torch.Tensor:
    """Sigmoid schedule (Jabri et al. 2022, "Scalable Adaptive Computation for Iterative Generation", Alg. 1).

    abar(u) is a sigmoid of ``(u * (end - start) + start) / tau`` rescaled so abar(0) = 1 and abar(1) = 0;
    larger ``tau`` flattens it. Reported to work better than cosine for larger images.
    """
    check_int(num_timesteps, "method.num_timesteps", minimum=1)
    check_float(tau, "schedule.tau", 0.0, inclusive=False)
    check_float(max_beta, "schedule.max_beta", 0.0, 1.0, inclusive=False)
    if not end > start:
        raise ConfigError(f"schedule.end ({end}) must be greater than schedule.start ({start})")
    u = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    v_start = torch.sigmoid(torch.tensor(start / tau, dtype=torch.float64))
    v_end = torch.sigmoid(torch.tensor(end / tau, dtype=torch.float64))
    alpha_bar = (v_end - torch.sigmoid((u * (end - start) + start) / tau)) / (v_end - v_start)
    betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
    return betas.clamp(min=0.0, max=max_beta)

"""Noise schedules: pure float64 functions ``(num_timesteps, **params) -> betas``.

``betas[i]`` is the variance added from step ``i`` to ``i + 1`` (``betas[0]`` is Ho et al.'s beta_1); everything
derived (abar_t, posterior coefficients) is computed once in :class:`~diffusion.methods.gaussian.GaussianDiffusion`.
``schedule.zero_terminal_snr=true`` rescales the betas (:func:`rescale_zero_terminal_snr`) so abar_T = 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, get_args

import torch

from diffusion.runtime.checks import ConfigError, check_choice, check_float, check_int

Schedule = Callable[[int], torch.Tensor]
TimestepSpacing = Literal["leading", "trailing", "linspace"]
SPACINGS: tuple[str, ...] = get_args(TimestepSpacing)


def linear_betas(
    num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02, zero_terminal_snr: bool = False
) -> torch.Tensor:
    """Linearly spaced betas (Ho et al. 2020, Sec. 4: 1e-4 to 0.02 over T = 1000).

    The endpoints are used as given for every T; with few steps raise ``beta_end`` so that abar_T stays near 0.
    """
    check_int(num_timesteps, "method.num_timesteps", minimum=1)
    check_float(beta_start, "schedule.beta_start", 0.0, 1.0, inclusive=False)
    check_float(beta_end, "schedule.beta_end", 0.0, 1.0, inclusive=False)
    if beta_end < beta_start:
        raise ConfigError(f"schedule.beta_end ({beta_end}) must be >= schedule.beta_start ({beta_start})")
    betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
    return rescale_zero_terminal_snr(betas) if zero_terminal_snr else betas


def cosine_betas(
    num_timesteps: int, s: float = 0.008, max_beta: float = 0.999, zero_terminal_snr: bool = False
) -> torch.Tensor:
    """Cosine schedule (Nichol & Dhariwal 2021, eq. 17).

    abar(u) = cos^2((u + s) / (1 + s) * pi / 2) for u = i / T, and beta_i = min(1 - abar((i+1)/T) / abar(i/T),
    max_beta); the clip keeps the last steps from being singular near u = 1.
    """
    check_int(num_timesteps, "method.num_timesteps", minimum=1)
    check_float(s, "schedule.s", minimum=0.0)
    check_float(max_beta, "schedule.max_beta", 0.0, 1.0, inclusive=False)
    u = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    alpha_bar = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)
    return rescale_zero_terminal_snr(betas) if zero_terminal_snr else betas


def sigmoid_betas(
    num_timesteps: int,
    start: float = -3.0,
    end: float = 3.0,
    tau: float = 1.0,
    max_beta: float = 0.999,
    zero_terminal_snr: bool = False,
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
    betas = (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(min=0.0, max=max_beta)
    return rescale_zero_terminal_snr(betas) if zero_terminal_snr else betas


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and scale sqrt(abar) so the last step has zero SNR (Lin et al. 2024, Alg. 1):
    sqrt(abar_t) -> (sqrt(abar_t) - sqrt(abar_T)) * sqrt(abar_1) / (sqrt(abar_1) - sqrt(abar_T)), so the ``(T,)``
    float64 result has ``betas[-1] == 1`` and abar_T = 0 exactly; the network must then predict ``v`` or ``x0``.

    Raises:
        ConfigError: if T < 2 (one step cannot both keep abar_1 and reach abar_T = 0).
    """
    if betas.shape[0] < 2:
        raise ConfigError(f"schedule.zero_terminal_snr needs method.num_timesteps >= 2, got {betas.shape[0]}")
    sqrt_abar = torch.cumprod(1.0 - betas.to(torch.float64), dim=0).sqrt()  # (T,)
    first, last = sqrt_abar[0].clone(), sqrt_abar[-1].clone()
    sqrt_abar = (sqrt_abar - last) * (first / (first - last))
    abar = sqrt_abar**2
    alphas = torch.cat([abar[:1], abar[1:] / abar[:-1]])  # alpha_t = abar_t / abar_{t-1}; alpha_T = 0
    return 1.0 - alphas


def spaced_timesteps(num_timesteps: int, steps: int, spacing: TimestepSpacing) -> list[int]:
    """A descending subsequence of [0, T) with ``steps`` entries (Lin et al. 2024, Table 2 spacings).

    ``leading``: 0, k, 2k, ... with k = T // steps (never reaches T - 1);
    ``trailing``: round(T - i * T / steps) - 1, so it always starts at T - 1;
    ``linspace``: round(linspace(0, T - 1, steps)).
    """
    check_int(steps, "sampler.steps", minimum=1, maximum=num_timesteps)
    check_choice(spacing, "sampler.timestep_spacing", SPACINGS)
    if spacing == "leading":
        ratio = num_timesteps // steps
        sequence = [i * ratio for i in range(steps)]
    elif spacing == "trailing":
        ratio = num_timesteps / steps
        sequence = [round(num_timesteps - i * ratio) - 1 for i in range(steps)][::-1]
    else:
        sequence = torch.linspace(0, num_timesteps - 1, steps, dtype=torch.float64).round().long().tolist()
    return sorted(set(sequence), reverse=True)

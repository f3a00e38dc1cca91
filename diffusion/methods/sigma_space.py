"""Sampling in sigma space (Karras et al. 2022, EDM) for any trained diffusion: what the Sampler needs from a method
sampled by the solvers of :mod:`diffusion.methods.karras`, and the denoiser view of a DDPM-trained network.

A DDPM (variance-preserving) diffusion is the EDM diffusion x = y + sigma n seen through a scale (EDM Table 1,
"VP" column; eq. 4 with s(t) = sqrt(abar_t)). Notation map (paper -> code), for step index t of the schedule:

    abar_t                        ``alphas_cumprod[t]``
    sigma_t = sqrt((1 - abar_t) / abar_t)     the schedule's noise level in sigma space (``schedule_sigmas``)
    x_t = sqrt(abar_t) x = x / sqrt(1 + sigma^2)     the network's input for the sigma-space sample x
    D(x; sigma) = the network's x0 prediction at x_t, t(sigma)   (``denoise``)

A Karras sigma need not be one of the T schedule sigmas: t(sigma) interpolates linearly in log sigma between the
two neighbouring timesteps, giving a fractional timestep (k-diffusion's ``sigma_to_t``); the networks embed float
timesteps smoothly (:func:`~diffusion.models.embeddings.timestep_embedding`). The Karras range is the schedule's
own, [sigma_0, sigma_{T-1}], so the first and last sigmas are exact timesteps. The x0 prediction at a
fractional t uses abar = 1 / (1 + sigma^2) of the sigma itself, so D is exact at every sigma for the
network's output.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch

from diffusion.methods.base import BaseMethod, TimestepSpacing
from diffusion.methods.karras import SOLVER_NAMES, SolverName, karras_sigmas, solver_nfe
from diffusion.runtime.checks import ConfigError, check_choice

Network = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_in (B, ...), t (B,) float) -> output (B, ...)
DEFAULT_STEPS = 18  # sampler.steps=null: EDM's CIFAR-10 setting (Alg. 1, 35 NFE with Heun)


class SigmaSpaceMethod(ABC):
    """A method the Sampler drives with a sigma-space solver instead of :meth:`BaseMethod.step`.

    Subclasses set ``solver``, ``sigma_min``, ``sigma_max`` and ``num_timesteps`` and define :meth:`denoise`.
    """

    solver: SolverName
    sigma_min: float
    sigma_max: float
    num_timesteps: int

    @abstractmethod
    def denoise(self, network: Network, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """D(x; sigma): the clean-sample estimate for the sigma-space sample ``x`` ``(B, ...)``."""

    def sigmas(self, steps: int | None, rho: float = 7.0) -> list[float]:
        """The Karras noise levels (EDM eq. 5) between ``sigma_min`` and ``sigma_max``, then 0."""
        return karras_sigmas(steps or DEFAULT_STEPS, self.sigma_min, self.sigma_max, rho)

    def nfe(self, steps: int | None, spacing: TimestepSpacing = "leading") -> int:
        """Network evaluations per sample (a guided evaluation counted once)."""
        return solver_nfe(self.solver, steps or DEFAULT_STEPS)

    def timesteps(self, steps: int | None, spacing: TimestepSpacing = "leading") -> list[int]:
        """Step indices N-1, ..., 0 (index i is the step from ``sigmas[N-1-i]``): the labels of trajectory frames.
        ``spacing`` is ignored (the Karras rho spaces the steps)."""
        return list(range((steps or DEFAULT_STEPS) - 1, -1, -1))

    def timestep_pairs(self, steps: int | None, spacing: TimestepSpacing = "leading") -> list[tuple[int, int]]:
        sequence = self.timesteps(steps, spacing)
        return list(zip(sequence, sequence[1:] + [-1]))


class SigmaSpaceDDPM(SigmaSpaceMethod, BaseMethod):
    """A DDPM-trained diffusion (any schedule; epsilon, x0 or v prediction) sampled by a Karras solver.

    It takes DDPM's keys, so ``task=sample run_dir=<ddpm run> method=heun`` keeps the run's schedule, T and
    prediction; it also trains like DDPM. Subclasses :class:`Euler`, :class:`Heun`, :class:`DPMpp2MKarras`
    choose the solver.

    Raises:
        ConfigError: with a zero-terminal-SNR schedule (sigma_{T-1} = inf has no Karras schedule).
    """

    solver: SolverName = "heun"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.alphas_cumprod[-1] == 0:
            raise ConfigError("sigma-space samplers (method=euler/heun/dpmpp_2m_karras) need a finite sigma_max: "
                              "set schedule.zero_terminal_snr=false or use method=ddim")
        schedule_sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod).sqrt()  # (T,) float64, increasing
        self._buffer("log_sigmas", schedule_sigmas.log())
        self.sigma_min, self.sigma_max = float(schedule_sigmas[0]), float(schedule_sigmas[-1])

    def sigma_to_t(self, sigma: float) -> float:
        """The fractional timestep whose log sigma is ``log(sigma)``, linear between neighbouring timesteps."""
        log_sigma = torch.tensor(math.log(sigma), dtype=torch.float64)
        log_sigmas = self.log_sigmas.cpu()
        high = int(torch.searchsorted(log_sigmas, log_sigma).clamp(1, self.num_timesteps - 1))
        low = high - 1
        weight = float((log_sigma - log_sigmas[low]) / (log_sigmas[high] - log_sigmas[low]))
        return low + min(max(weight, 0.0), 1.0)

    def denoise(self, network: Network, x: torch.Tensor, sigma: float) -> torch.Tensor:
        sqrt_abar = 1 / math.sqrt(1 + sigma**2)  # abar = 1 / (1 + sigma^2)
        x_t = x * sqrt_abar  # (B, ...)
        t = torch.full((x.shape[0],), self.sigma_to_t(sigma), device=x.device)  # (B,) float
        x0 = self.x0_from_output(x_t, sqrt_abar, sigma * sqrt_abar, network(x_t, t))
        return x0.clamp(-1.0, 1.0) if self.clip_denoised else x0

    def step(self, x_t: torch.Tensor, t: int, t_prev: int, model_output: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        raise TypeError(f"{type(self).__name__} is sampled by the Sampler's sigma-space loop, not step by step")


class Euler(SigmaSpaceDDPM):
    """Euler on the probability-flow ODE over Karras sigmas (EDM Alg. 1 without correction)."""

    name = "euler"
    solver: SolverName = "euler"


class Heun(SigmaSpaceDDPM):
    """Heun's method with optional churn (EDM Alg. 1 and 2)."""

    name = "heun"
    solver: SolverName = "heun"


class DPMpp2MKarras(SigmaSpaceDDPM):
    """DPM-Solver++(2M) over Karras sigmas (Lu et al. 2022b, Alg. 2; k-diffusion's ``sample_dpmpp_2m``)."""

    name = "dpmpp_2m_karras"
    solver: SolverName = "dpmpp_2m"


_DDPM_VIEWS: dict[str, type[SigmaSpaceDDPM]] = {"euler": Euler, "heun": Heun, "dpmpp_2m": DPMpp2MKarras}


def sigma_space_method(solver: SolverName, /, **trained: Any) -> SigmaSpaceMethod:
    """The run's trained diffusion, sampled by ``solver``: EDM keys (``sigma_data``) give
    :class:`~diffusion.methods.edm.EDM` with that solver, DDPM keys (``schedule``) the matching
    :class:`SigmaSpaceDDPM`. ``method=euler|heun|dpmpp_2m_karras`` point here, because ``task=sample`` keeps the
    run's method keys and replaces only the target."""
    check_choice(solver, "method.solver", SOLVER_NAMES)
    if "sigma_data" in trained:
        from diffusion.methods.edm import EDM

        return EDM(**{**trained, "solver": solver})
    trained.pop("solver", None)
    return _DDPM_VIEWS[solver](**trained)


def euler(**trained: Any) -> SigmaSpaceMethod:
    return sigma_space_method("euler", **trained)


def heun(**trained: Any) -> SigmaSpaceMethod:
    return sigma_space_method("heun", **trained)


def dpmpp_2m_karras(**trained: Any) -> SigmaSpaceMethod:
    return sigma_space_method("dpmpp_2m", **trained)

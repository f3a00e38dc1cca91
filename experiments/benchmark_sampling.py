"""Sampling figures: DDIM-50 against DDPM-1000 per sample (record 4) and the Sampler's per-step overhead
against a bare loop over the same update (bar 5).

For bar 5 the network is :class:`ScaledIdentity`, which costs next to nothing, so what is timed is the
loop itself: the Sampler with its method's ``step`` against the update written inline with the coefficients
as Python numbers. Both draw the same noise from the same generator in the same order, so they must
return the same samples; :func:`measure_overhead` checks that before it reports a ratio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from diffusion.methods.base import BaseMethod
from diffusion.sampler import Sampler
from diffusion.devices import autocast
from experiments.benchmark_timing import interleave, timed
from experiments.benchmark_training import build_parts


class ScaledIdentity(nn.Module):
    """A trivial "network": predicts ``0.1 * x_t``, so a sampling step costs only the loop's own work."""

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return 0.1 * x


def make_sampler(cfg: DictConfig, model: nn.Module, method: BaseMethod, sample_shape: tuple[int, ...],
                 num_samples: int, steps: int | None, device: torch.device) -> Sampler:
    """The configured sampler (``conf/sampler``) for ``model`` and ``method``: one batch of ``num_samples``."""
    return instantiate(cfg.sampler, _convert_="all")(
        model=model, method=method, sample_shape=sample_shape, num_samples=num_samples,
        batch_size=num_samples, steps=steps, device=str(device),
    )


def bare_ddpm(sampler: Sampler, num_samples: int) -> torch.Tensor:
    """DDPM ancestral sampling (Ho et al. Alg. 2 with the x0-clipped posterior mean, eqs. 6-7), inline."""
    method, device, model = sampler.method, sampler.device, sampler.model
    generator = torch.Generator().manual_seed(sampler.seed)
    x = torch.randn((num_samples, *sampler.sample_shape), generator=generator).to(device)  # x_T
    sqrt_abar, sqrt_one_minus_abar = method.sqrt_alphas_cumprod.tolist(), method.sqrt_one_minus_alphas_cumprod.tolist()
    coef1, coef2 = method.posterior_mean_coef1.tolist(), method.posterior_mean_coef2.tolist()
    sigma = method.posterior_variance.sqrt().tolist()  # sqrt(beta_tilde_t)
    t_batch = torch.empty(num_samples, dtype=torch.long, device=device)
    for t in range(method.num_timesteps - 1, -1, -1):
        with autocast(device, sampler.precision):
            eps = model(x, t_batch.fill_(t))
        eps = eps.to(x.dtype)
        noise = torch.randn(x.shape, generator=generator).to(device)
        x0 = ((x - sqrt_one_minus_abar[t] * eps) / sqrt_abar[t]).clamp(-1.0, 1.0)
        x = coef1[t] * x0 + coef2[t] * x
        if t > 0:
            x = x + sigma[t] * noise
    return x.float().cpu()


def bare_ddim(sampler: Sampler, num_samples: int) -> torch.Tensor:
    """Deterministic DDIM (Song et al. eq. 12, eta = 0) on the sampler's timesteps, inline."""
    method, device, model = sampler.method, sampler.device, sampler.model
    generator = torch.Generator().manual_seed(sampler.seed)
    x = torch.randn((num_samples, *sampler.sample_shape), generator=generator).to(device)
    abar = method.alphas_cumprod.tolist()
    t_batch = torch.empty(num_samples, dtype=torch.long, device=device)
    for t, t_prev in method.timestep_pairs(sampler.steps, sampler.timestep_spacing):
        abar_t, abar_prev = abar[t], (abar[t_prev] if t_prev >= 0 else 1.0)
        with autocast(device, sampler.precision):
            eps = model(x, t_batch.fill_(t))
        eps = eps.to(x.dtype)
        x0 = ((x - math.sqrt(1 - abar_t) * eps) / math.sqrt(abar_t)).clamp(-1.0, 1.0)
        eps = (x - math.sqrt(abar_t) * x0) / math.sqrt(1 - abar_t)  # eps consistent with the clipped x0
        x = math.sqrt(abar_prev) * x0 + math.sqrt(1 - abar_prev) * eps
    return x.float().cpu()


@dataclass
class OverheadFigures:
    """Seconds per sampling step, per round, of the Sampler and of the bare loop (bar 5)."""

    method: str
    steps: int
    num_samples: int
    sampler: list[float]
    bare: list[float]
    max_difference: float  # between the two loops' samples: they do the same math


def measure_overhead(cfg: DictConfig, method_name: str, steps: int | None, num_samples: int,
                     device: torch.device, rounds: int) -> OverheadFigures:
    """The Sampler with a trivial model against the inline loop of the same update (DDPM or DDIM, eta = 0)."""
    parts = build_parts(cfg)
    sampler = make_sampler(cfg, ScaledIdentity(), parts.method, parts.data.sample_shape, num_samples, steps, device)
    bare = bare_ddpm if method_name == "ddpm" else bare_ddim
    if sampler.eta != 0 and method_name == "ddim":
        raise ValueError("the DDIM overhead loop is written for sampler.eta=0; drop the sampler.eta override")
    difference = (sampler.sample().samples - bare(sampler, num_samples)).abs().max().item()
    if difference > 1e-4:
        raise AssertionError(f"bare {method_name} loop and Sampler disagree by {difference:.2e}: not the same math")
    num_steps = len(parts.method.timestep_pairs(steps, sampler.timestep_spacing))
    runs = interleave({
        "sampler": lambda: timed(sampler.sample, device) / num_steps,
        "bare": lambda: timed(lambda: bare(sampler, num_samples), device) / num_steps,
    }, rounds)
    return OverheadFigures(method_name, num_steps, num_samples, runs["sampler"], runs["bare"], difference)


@dataclass
class SamplingFigures:
    """Record 4: seconds per sample (per round) of DDPM through all T steps and of DDIM with ``ddim_steps``."""

    ddpm_steps: int
    ddim_steps: int
    num_samples: int
    ddpm: list[float]
    ddim: list[float]


def measure_ddim_vs_ddpm(cfg_ddpm: DictConfig, cfg_ddim: DictConfig, ddim_steps: int, num_samples: int,
                         device: torch.device, rounds: int) -> SamplingFigures:
    """``Sampler.sample`` on the default U-Net, one batch of ``num_samples``, DDPM-T against DDIM-``ddim_steps``."""
    ddpm_parts, ddim_parts = build_parts(cfg_ddpm), build_parts(cfg_ddim)
    shape = ddpm_parts.data.sample_shape
    ddpm = make_sampler(cfg_ddpm, ddpm_parts.model, ddpm_parts.method, shape, num_samples, None, device)
    ddim = make_sampler(cfg_ddim, ddim_parts.model, ddim_parts.method, shape, num_samples, ddim_steps, device)
    ddim.sample()  # warm-up: kernel selection, allocator
    runs = interleave({
        "ddpm": lambda: timed(ddpm.sample, device) / num_samples,
        "ddim": lambda: timed(ddim.sample, device) / num_samples,
    }, rounds)
    return SamplingFigures(ddpm_parts.method.num_timesteps, ddim_steps, num_samples, runs["ddpm"], runs["ddim"])

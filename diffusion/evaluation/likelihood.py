"""Negative log-likelihood by the instantaneous change of variables along the probability-flow ODE (Chen et al. 2018,
eq. 4; Grathwohl et al. 2019, FFJORD; Song et al. 2021, Sec. 4.3 and App. D.2), for every method.

Notation: an ODE dx/ds = f(x, s) carries a data point x(s_data) to the prior end x(s_prior) ~ N(0, std^2 I), and

    log p(x(s_data)) = log N(x(s_prior); 0, std^2 I) + L(s_prior),   dL/ds = div f(x(s), s),  L(s_data) = 0

    flow matching   s = t from 1 (data; 1 - 1e-5 on the vp path) to its start (0: noise), f = u(x_t, t), std =
                    sigma_{t_start} (exact where alpha_{t_start} = 0)
    DDPM, EDM       s = sigma from sigma_min to sigma_max, f = (x - D(x; sigma)) / sigma (EDM eq. 3), std =
                    sigma_max (the data's spread is negligible beside it); x(sigma_min) is the data point itself

The divergence is exact (one backward pass per dimension) or Hutchinson's E[e^T (df/dx) e] with Rademacher probes
drawn once per trajectory (FFJORD Sec. 3.1). Discrete data are dequantized, x + w (u - 1/2) with w one level's width,
giving the bound -log P(level) <= -log p(x~) - D log w in bits per dimension; points report nats. Solver: dopri5.
Meta's ``ODESolver.compute_likelihood`` (the tests check against it) only integrates a flow from 1 to 0.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch

from diffusion.methods.base import BaseMethod, Network
from diffusion.runtime.checks import ConfigError, check_float, check_int

EXACT_MAX_DIM = 16  # up to this many dimensions the exact divergence is the default


class ProbabilityFlow(NamedTuple):
    """The ODE dx/ds = ``field(x, s)`` from ``s_data`` to ``s_prior``, where x ~ N(0, ``prior_std``^2 I)."""

    field: Callable[[torch.Tensor, float], torch.Tensor]
    s_data: float
    s_prior: float
    prior_std: float


class Likelihood(NamedTuple):
    """Per-point negative log-likelihoods ``(N,)`` in ``unit`` (``bits/dim`` or ``nats``), their mean, its standard
    error over the points, the part of it due to Hutchinson's probes (0 when exact) and the ODE's evaluations."""

    per_point: torch.Tensor
    mean: float
    standard_error: float
    hutchinson_standard_error: float
    unit: str
    nfe: int


def probability_flow(method: BaseMethod, network: Network) -> ProbabilityFlow:
    """The probability-flow ODE of ``method``'s unclipped denoiser (or a flow's velocity) for ``network``.

    Raises:
        ConfigError: naming ``evaluator.likelihood`` for a schedule whose sigma_max is infinite (zero terminal SNR).
    """
    if "time" in method.grids:  # a flow: its own ODE in t, and an exact Gaussian prior at its start
        start, end = method.sampling_times(1)[0], getattr(method, "end_time", 1.0)
        return ProbabilityFlow(lambda x, t: method.velocity(network, x, t), end, start,
                               float(method.path_coefficients(start)[1]))
    if math.isinf(method.sigma_max):
        raise ConfigError("evaluator.likelihood=true needs a finite sigma_max: the prior of a zero-terminal-SNR "
                          "schedule is not a Gaussian at a finite level; set schedule.zero_terminal_snr=false")

    def field(x: torch.Tensor, sigma: float) -> torch.Tensor:
        return (x - method.denoise(network, x, sigma)) / sigma

    return ProbabilityFlow(field, method.sigma_min, method.sigma_max, method.sigma_max)


@contextlib.contextmanager
def unclipped(method: BaseMethod) -> Iterator[None]:
    """``method`` with ``clip_denoised`` off: a clamped denoiser is not differentiable and changes the density."""
    clip = getattr(method, "clip_denoised", False)
    method.clip_denoised = False
    try:
        yield
    finally:
        method.clip_denoised = clip


def divergence(f: torch.Tensor, x: torch.Tensor, probes: torch.Tensor | None) -> torch.Tensor:
    """div f per sample ``(B,)``: exact (sum of d f_i / d x_i over the flattened dimensions) with ``probes=None``,
    else Hutchinson's e^T (df/dx) e for the probes e ``(B, ...)``. ``f`` must be a function of ``x`` with grad."""
    if probes is not None:
        (vjp,) = torch.autograd.grad(f, x, probes)
        return (vjp * probes).flatten(1).sum(1)
    flat = f.flatten(1)
    total = torch.zeros(f.shape[0], dtype=f.dtype, device=f.device)
    for i in range(flat.shape[1]):
        (grad,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True)
        total = total + grad.flatten(1)[:, i]
    return total


def _log_likelihood(flow: ProbabilityFlow, x: torch.Tensor, probes: torch.Tensor | None, atol: float,
                    rtol: float) -> tuple[torch.Tensor, int]:
    """log p(x) ``(B,)`` in nats by one dopri5 solve of the augmented state (x, L); and its field evaluations."""
    from torchdiffeq import odeint

    calls = [0]

    def dynamics(s: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        calls[0] += 1
        with torch.enable_grad():
            x_s = state[0].detach().requires_grad_(True)
            f = flow.field(x_s, float(s))
            div = divergence(f, x_s, probes)
        return f.detach(), div.detach()

    span = torch.tensor([flow.s_data, flow.s_prior], dtype=x.dtype, device=x.device)
    zeros = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    x_prior, change = (path[-1] for path in odeint(dynamics, (x, zeros), span, method="dopri5", atol=atol,
                                                   rtol=rtol))
    dim = x[0].numel()
    prior = (-0.5 * (x_prior / flow.prior_std).pow(2).flatten(1).sum(1) - dim * math.log(flow.prior_std)
             - 0.5 * dim * math.log(2 * math.pi))
    return prior + change, calls[0]


@torch.inference_mode(False)  # the divergence needs autograd, also when called from an inference-mode task
def negative_log_likelihood(method: BaseMethod, network: Network, data: torch.Tensor, *,
                            bin_width: float | None = None, hutchinson_samples: int | None = None,
                            atol: float = 1e-5, rtol: float = 1e-5,
                            generator: torch.Generator | None = None) -> Likelihood:
    """-log p of each point of ``data`` ``(N, ...)`` (the model's space: [-1, 1] images, standardised points) under
    ``method`` with ``network`` (a function of (x, t); pass the unconditional model for a conditional run).

    ``bin_width`` (one level of discrete data, 2/255 for 8-bit images) gives bits per dimension, None nats;
    ``hutchinson_samples`` 0 is the exact divergence, None exact up to ``EXACT_MAX_DIM`` dimensions, else 4 probes.

    Raises:
        ConfigError: naming ``evaluator.hutchinson_samples``, ``evaluator.dequantization`` or ``evaluator.likelihood``.
    """
    data = data.clone()  # a normal tensor (autograd) even when the caller made it under inference mode
    dim = data[0].numel()
    samples = hutchinson_samples if hutchinson_samples is not None else (0 if dim <= EXACT_MAX_DIM else 4)
    samples = check_int(samples, "evaluator.hutchinson_samples", minimum=0)
    x = data if bin_width is None else dequantize(data, bin_width, generator)
    copies = max(samples, 1)
    batch = x.repeat_interleave(copies, dim=0)  # (N K, ...): each copy of a point with its own probe
    probes = None
    if samples:
        signs = torch.randint(0, 2, batch.shape, generator=generator, device=_draw_device(generator, data))
        probes = (signs.to(batch.dtype) * 2 - 1).to(batch.device)
    with unclipped(method):
        log_p, nfe = _log_likelihood(probability_flow(method, network), batch, probes, atol, rtol)
    nll = -log_p.reshape(-1, copies)  # (N, K) nats
    if bin_width is not None:
        nll = (nll - dim * math.log(bin_width)) / (dim * math.log(2))  # bits per dimension of the levels
    per_point = nll.mean(1)
    n = per_point.numel()
    standard_error = float(per_point.std() / math.sqrt(n)) if n > 1 else math.nan
    probe_error = float((nll.var(1) / copies).sum().sqrt() / n) if copies > 1 else 0.0
    return Likelihood(per_point, float(per_point.mean()), standard_error, probe_error,
                      "bits/dim" if bin_width is not None else "nats", nfe)


def dequantize(data: torch.Tensor, bin_width: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """x + w (u - 1/2), u ~ U[0, 1)^D: each level spread uniformly over its bin of width ``bin_width``.

    Raises:
        ConfigError: naming ``evaluator.dequantization`` unless ``bin_width`` > 0.
    """
    check_float(bin_width, "evaluator.dequantization", minimum=0.0, inclusive=False)
    u = torch.rand(data.shape, generator=generator, dtype=data.dtype, device=_draw_device(generator, data))
    return data + bin_width * (u.to(data.device) - 0.5)


def _draw_device(generator: torch.Generator | None, like: torch.Tensor) -> torch.device:
    """Where ``generator`` draws (its own device), else ``like``'s."""
    return generator.device if generator is not None else like.device

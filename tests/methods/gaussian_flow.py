"""Gaussian data y ~ N(mu, s^2 I) on an affine path: the exact velocity field, the exact ODE map and the exact
log-density, so flow solvers and likelihoods can be checked in closed form.

With x_t = alpha_t y + sigma_t n the marginal is N(alpha mu, (alpha^2 s^2 + sigma^2) I) and, per coordinate,
E[y | x_t] = mu + alpha s^2 (x_t - alpha mu) / v_t, E[n | x_t] = sigma (x_t - alpha mu) / v_t, v_t = alpha^2 s^2 +
sigma^2; u = d_alpha E[y | x_t] + d_sigma E[n | x_t]. The ODE keeps z = (x_t - alpha mu) / sqrt(v_t) fixed.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from diffusion.methods import FlowMatching


class GaussianOracle(nn.Module):
    """The exact network of ``method`` (its prediction target) for N(mu, s^2 I) data; counts its calls."""

    def __init__(self, method: FlowMatching, mu: float, s: float) -> None:
        super().__init__()
        self.method, self.mu, self.s, self.calls = method, mu, s, 0

    def posterior(self, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(E[y | x_t], E[n | x_t]) in float64 for per-sample times ``t`` ``(B,)``."""
        alpha, sigma, _, _ = (c.reshape(-1, *[1] * (x_t.dim() - 1)) for c in self.method.path_coefficients(t))
        x = x_t.double()
        variance = alpha**2 * self.s**2 + sigma**2
        centred = x - alpha * self.mu
        return self.mu + alpha * self.s**2 * centred / variance, sigma * centred / variance

    def forward(self, x_t: torch.Tensor, time: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        self.calls += 1
        t = time.double() / self.method.num_timesteps
        data, noise = self.posterior(x_t, t)
        if self.method.prediction == "x0":
            return data.to(x_t.dtype)
        if self.method.prediction == "noise":
            return noise.to(x_t.dtype)
        _, _, d_alpha, d_sigma = (c.reshape(-1, *[1] * (x_t.dim() - 1)) for c in self.method.path_coefficients(t))
        return (d_alpha * data + d_sigma * noise).to(x_t.dtype)


def ode_map(method: FlowMatching, n: torch.Tensor, mu: float, s: float, t_start: float = 0.0) -> torch.Tensor:
    """Where the exact ODE carries the samplers' start x_{t_start} = sigma_{t_start} n (at t_start > 0 the data's
    share alpha mu is left out, as EDM's x = sigma_max n): mu + s z, z = the standardised start."""
    alpha, sigma, _, _ = (float(c) for c in method.path_coefficients(t_start))
    x = sigma * n
    return mu + s * (x - alpha * mu) / math.sqrt(alpha**2 * s**2 + sigma**2)


def log_density(x: torch.Tensor, mu: float, s: float) -> torch.Tensor:
    """log N(x; mu, s^2 I) per sample ``(B,)``, in nats."""
    d = x[0].numel()
    return -0.5 * ((x - mu) / s).pow(2).flatten(1).sum(1) - d * math.log(s) - 0.5 * d * math.log(2 * math.pi)

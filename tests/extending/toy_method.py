"""A method written outside the package, as a newcomer adds one: a variance-exploding diffusion x = y + sigma n
with log-uniform training sigmas, whose network predicts the clean sample from x / sqrt(1 + sigma^2)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from diffusion.methods.base import BaseMethod, broadcast


class ToyVE(BaseMethod):
    """D(x; sigma) = F(x / sqrt(1 + sigma^2), log(sigma) / 4); sampled by the Karras-grid solvers."""

    name = "toy_ve"
    solvers = ("euler", "heun", "dpmpp_2m_karras")
    grids = ("karras",)
    prediction = "x0"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 20.0, num_timesteps: int = 100,
                 default_solver: str = "heun") -> None:
        super().__init__()
        self.sigma_min, self.sigma_max, self.num_timesteps = sigma_min, sigma_max, num_timesteps
        self.default_solver = self.check_solver(default_solver)

    def sigmas(self, t: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        """``(B,)`` log-uniform sigmas: random in training, the quantile (t + 0.5) / T for validation's fixed t."""
        u = torch.rand(batch, device=device) if t is None else (t.to(device).float() + 0.5) / self.num_timesteps
        return torch.exp(math.log(self.sigma_min) + u * (math.log(self.sigma_max) - math.log(self.sigma_min)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return x0 + broadcast(self.sigmas(t, x0.shape[0], x0.device), x0) * noise

    def compute_loss(self, model: nn.Module, x0: torch.Tensor, *, t: torch.Tensor | None = None,
                     noise: torch.Tensor | None = None, **model_kwargs: Any) -> torch.Tensor:
        sigma = self.sigmas(t, x0.shape[0], x0.device)  # (B,)
        noise = torch.randn_like(x0) if noise is None else noise
        x = x0 + broadcast(sigma, x0) * noise
        kwargs = self.condition_kwargs(model, model_kwargs)
        prediction = model(x / broadcast((1 + sigma**2).sqrt(), x0), sigma.log() / 4, **kwargs)
        return (prediction.float() - x0.float()).pow(2).mean()

    def denoise(self, network: Any, x: torch.Tensor, sigma: float) -> torch.Tensor:
        c_noise = torch.full((x.shape[0],), math.log(sigma) / 4, device=x.device)
        return network(x / math.sqrt(1 + sigma**2), c_noise)

"""DDIM (Song et al. 2021): the same trained model, sampled on a subsequence of timesteps."""

from __future__ import annotations

from typing import Any

import torch

from diffusion.methods.base import BaseMethod, TimestepSpacing, spaced_timesteps


class DDIM(BaseMethod):
    """Samples with :meth:`ddim_step` on ``steps`` timesteps chosen by ``spacing``.

    ``eta`` (from ``sampler.eta``) interpolates between deterministic DDIM (0) and DDPM-like ancestral noise (1).
    ``steps=None`` takes :attr:`default_steps` (50, the middle of the DDIM paper's Table 1; capped at T).
    """

    name = "ddim"
    default_steps = 50  # sampler.steps=null

    def timesteps(self, steps: int | None, spacing: TimestepSpacing = "leading") -> list[int]:
        return spaced_timesteps(self.num_timesteps, steps or min(self.default_steps, self.num_timesteps), spacing)

    def step(
        self,
        x_t: torch.Tensor,
        t: int,
        t_prev: int,
        model_output: torch.Tensor,
        *,
        eta: float = 0.0,
        noise: torch.Tensor | None = None,
        state: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        return self.ddim_step(x_t, t, t_prev, model_output, eta=eta, noise=noise)

    def needs_noise(self, eta: float) -> bool:
        return eta > 0

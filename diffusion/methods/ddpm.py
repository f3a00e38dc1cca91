"""DDPM (Ho et al. 2020): ancestral sampling through all T steps."""

from __future__ import annotations

from typing import Any

import torch

from diffusion.methods.base import BaseMethod, TimestepSpacing


class DDPM(BaseMethod):
    """Samples with :meth:`p_sample` at every step T-1, ..., 0.

    ``steps`` and ``spacing`` are accepted for a uniform sampler interface and ignored: the ancestral step's
    posterior variance is defined for consecutive steps only (use ``method=ddim`` with ``sampler.eta=1`` for a
    strided stochastic sampler).
    """

    name = "ddpm"

    def timesteps(self, steps: int | None, spacing: TimestepSpacing = "leading") -> list[int]:
        return list(range(self.num_timesteps - 1, -1, -1))

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
        assert t_prev == t - 1, "DDPM steps through consecutive timesteps"
        return self.p_sample(x_t, t, model_output, noise)

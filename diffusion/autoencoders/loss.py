"""The training objective of a KL autoencoder (Rombach et al. 2022, App. G; Kingma & Welling 2014, eq. 10):
reconstruction error plus a small weight times KL(q(z | x) || N(0, I)), both per pixel."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from diffusion.runtime.checks import check_float


class AutoencoderLoss(nn.Module):
    """``compute_loss(autoencoder, x)`` = mean (x_hat - x)^2 + ``kl_weight`` * KL / pixels, what the Trainer
    minimises for ``task=train_autoencoder`` (it takes the place of a diffusion method there).

    Training decodes z = mean + std * eps, eps from the global generator (so a resumed run redraws it); validation
    (``noise`` given) decodes the posterior mean, the same every epoch.
    """

    name = "autoencoder"
    num_timesteps = 1  # the Trainer's fixed validation draws timesteps in [0, num_timesteps)

    def __init__(self, kl_weight: float = 1e-6) -> None:
        super().__init__()
        self.kl_weight = check_float(kl_weight, "autoencoder.kl_weight", minimum=0.0)

    def compute_loss(self, model: nn.Module, x0: torch.Tensor, *, t: torch.Tensor | None = None,
                     noise: torch.Tensor | None = None, **model_kwargs: Any) -> torch.Tensor:
        posterior = model.encode(x0).latent_dist  # (B, c, h, w) mean and std
        z = posterior.mean if noise is not None else posterior.mean + posterior.std * torch.randn_like(posterior.std)
        reconstruction = model.decode(z).sample
        error = (reconstruction.float() - x0.float()).pow(2).mean()
        # KL(N(mu, s^2) || N(0, 1)) = (mu^2 + s^2 - 1 - log s^2) / 2 per latent entry, summed per image.
        kl = 0.5 * (posterior.mean.pow(2) + posterior.var - 1.0 - posterior.logvar).flatten(1).sum(1)
        return error + self.kl_weight * kl.float().mean() / x0[0].numel()

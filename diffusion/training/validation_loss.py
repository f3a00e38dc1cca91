"""The validation loss every epoch: the method's loss on the validation split at timesteps and noise drawn once.

Their own generators (``trainer.val_seed``) give the same draws every epoch, so epochs compare and the training
RNG streams are untouched (exact resume).
"""

from __future__ import annotations

import torch
from torch import nn

from diffusion.data.base import BaseData
from diffusion.methods.base import BaseMethod
from diffusion.runtime.devices import Precision, autocast


class FixedDrawValidation:
    """``validation(model)``: the mean loss of ``model`` on ``val`` ``(N, ...)`` (and ``labels``, for a conditional
    model) at fixed timesteps ``t`` in [0, method.num_timesteps) and noise, in batches of ``batch_size``."""

    def __init__(self, method: BaseMethod, data: BaseData, val: torch.Tensor, labels: torch.Tensor | None,
                 seed: int, precision: Precision, batch_size: int = 512) -> None:
        self.method, self.data, self.val, self.labels = method, data, val, labels
        self.precision, self.batch_size = precision, batch_size
        self.seed = seed
        generator = torch.Generator().manual_seed(seed)
        self.t = torch.randint(0, method.num_timesteps, (len(val),), generator=generator).to(val.device)

    def noise(self, start: int, count: int) -> torch.Tensor:
        """The noise of ``val[start:start + count]``, drawn anew each call from a generator seeded by (seed, start):
        the same every epoch without holding a float32 copy of the whole split."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + start)
        return torch.randn((count, *self.val.shape[1:]), generator=generator).to(self.val.device)

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> float:
        total = 0.0
        for start in range(0, len(self.val), self.batch_size):
            chunk = slice(start, start + self.batch_size)
            kwargs = {} if self.labels is None else {"y": self.labels[chunk]}
            noise = self.noise(start, len(self.val[chunk]))
            with autocast(self.val.device, self.precision):
                loss = self.method.compute_loss(model, self.data.prepare_batch(self.val[chunk]), t=self.t[chunk],
                                                noise=noise, **kwargs)
            total += loss.item() * len(self.val[chunk])
        return total / len(self.val)

"""Which training samples each optimizer step of an epoch uses, on this rank.

An epoch's order is a pure function of ``(seed, epoch)`` and each rank takes every ``world_size``-th sample of
each global batch, so a resumed run draws the batches the uninterrupted one does.
"""

from __future__ import annotations

import math

import torch

from diffusion.runtime.checks import ConfigError
from diffusion.runtime.distributed import DistributedContext


def check_batch_split(batch_size: int, accumulate: int, dist: DistributedContext) -> None:
    """The global batch splits evenly over the ranks and accumulation micro-batches.

    Raises:
        ConfigError: naming ``trainer.batch_size`` and ``trainer.accumulate_grad_batches``.
    """
    parts = dist.world_size * accumulate
    if batch_size % parts:
        raise ConfigError(
            f"trainer.batch_size={batch_size} (the global batch) must be divisible by world size "
            f"{dist.world_size} x trainer.accumulate_grad_batches {accumulate} = {parts}"
        )


class EpochBatches:
    """Every step's sample indices of an epoch on this rank (its share of the global batch).

    Raises:
        ConfigError: (data-parallel) a global batch larger than the training set.
    """

    def __init__(self, num_train: int, batch_size: int, dist: DistributedContext, seed: int,
                 device: torch.device) -> None:
        if num_train < batch_size and dist.enabled:
            raise ConfigError(f"trainer.batch_size={batch_size} exceeds the {num_train} training samples")
        self.num_train, self.batch_size, self.dist, self.seed, self.device = num_train, batch_size, dist, seed, device
        # Data-parallel runs drop the last incomplete batch so every rank gets an equal share.
        self.steps_per_epoch = num_train // batch_size if dist.enabled else math.ceil(num_train / batch_size)

    def __call__(self, epoch: int) -> list[torch.Tensor]:
        """This rank's sample indices for every step of ``epoch``."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(self.num_train, generator=generator).to(self.device)
        batches = list(order.split(self.batch_size))[: self.steps_per_epoch]
        if self.dist.world_size == 1:
            return batches
        return [batch[self.dist.rank :: self.dist.world_size] for batch in batches]

"""A data set written outside the package, as a newcomer adds one: points on a ring (a ``BaseData`` with its
sample shape, kind and split). A point network built for it gets ``dim`` from the data's sample shape."""

from __future__ import annotations

import math

import torch

from diffusion.data.base import BaseData, DataSplits
from diffusion.data.split import train_val_indices
from diffusion.runtime.checks import check_int


class RingData(BaseData):
    """``num_samples`` points ``(cos s, sin s)`` for s evenly spaced around the circle, plus a little seeded noise."""

    kind = "points"

    def __init__(self, num_samples: int = 512, seed: int = 0) -> None:
        super().__init__()
        self.num_samples = check_int(num_samples, "data.num_samples", minimum=4)
        self.seed = seed

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (2,)

    def _load(self) -> DataSplits:
        s = torch.linspace(0, 2 * math.pi, self.num_samples, dtype=torch.float64)
        points = torch.stack([s.cos(), s.sin()], dim=1)  # (N, 2)
        noise = torch.randn(points.shape, generator=torch.Generator().manual_seed(self.seed), dtype=torch.float64)
        train, val = train_val_indices(self.num_samples, 0.1, self.seed)
        return DataSplits.from_indices((points + 0.02 * noise).float(), None, train, val)

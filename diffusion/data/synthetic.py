"""Random tensors of a given shape: for configurations at a paper's size that need no real data set (parameter
and FLOP counts, throughput checks), and for tests of any sample shape."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from diffusion.data.base import BaseData, DataSplits
from diffusion.data.split import train_val_indices
from diffusion.runtime.checks import ConfigError, check_float, check_int


class SyntheticData(BaseData):
    """``num_samples`` tensors of ``shape`` drawn uniformly in ``[-1, 1]`` (the range of image data) from a
    generator seeded with ``split_seed``, with uniform labels in ``[0, num_classes)`` when ``num_classes > 0``.
    Settings: see conf/data/synthetic.yaml.

    Raises:
        ConfigError: naming the ``data.*`` key of an invalid argument.
    """

    def __init__(self, shape: Sequence[int] = (3, 32, 32), num_classes: int = 0, num_samples: int = 512,
                 val_fraction: float = 0.1, split_seed: int = 0) -> None:
        super().__init__()
        if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence) or len(shape) not in (1, 3):
            raise ConfigError(f"data.shape must be [C, H, W] or [D], got {shape!r}")
        self.shape = tuple(check_int(size, "data.shape", minimum=1) for size in shape)
        if len(self.shape) == 3 and self.shape[1] != self.shape[2]:
            raise ConfigError(f"data.shape={list(self.shape)} must be square images (H = W) for the networks here")
        self.kind: Literal["image", "points"] = "image" if len(self.shape) == 3 else "points"  # type: ignore[misc]
        self.classes = check_int(num_classes, "data.num_classes", minimum=0)
        self.num_samples = check_int(num_samples, "data.num_samples", minimum=2)
        self.val_fraction = check_float(val_fraction, "data.val_fraction", 0.0, 1.0, inclusive=False)
        self.split_seed = check_int(split_seed, "data.split_seed")

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.shape

    @property
    def num_classes(self) -> int:
        return self.classes

    def _load(self) -> DataSplits:
        generator = torch.Generator().manual_seed(self.split_seed)
        x = torch.rand((self.num_samples, *self.shape), generator=generator) * 2 - 1  # (N, *shape) in [-1, 1]
        labels = (torch.randint(self.classes, (self.num_samples,), generator=generator) if self.classes else None)
        train_idx, val_idx = train_val_indices(self.num_samples, self.val_fraction, self.split_seed)
        return DataSplits.from_indices(x, labels, train_idx, val_idx)

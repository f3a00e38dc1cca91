"""Per-sample noise streams: sample i's initial noise and every step's noise are the same whatever the batch size
and whichever process draws it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample ``index``'s own noise stream under ``sampler.seed=seed``: numpy's SeedSequence of the
    pair, so nearby seeds and indices give unrelated streams (``seed + index`` would make sample 1 of seed 0 equal
    sample 0 of seed 1)."""
    return int(np.random.SeedSequence([seed % 2**64, index]).generate_state(1, np.uint64)[0])


class SampleNoise:
    """Standard-normal noise for a batch, each row from its own CPU generator seeded by :func:`sample_seed` of its
    global sample index (as EDM's ``generate.py``), so sample i's noise is the same whatever the batch size, process
    or device. Each call draws the next ``(B, *sample_shape)`` tensor, on ``device``.
    """

    def __init__(self, seed: int, indices: Sequence[int], sample_shape: Sequence[int],
                 device: torch.device | str = "cpu") -> None:
        self.generators = [torch.Generator().manual_seed(sample_seed(seed, i)) for i in indices]
        self.sample_shape = tuple(sample_shape)
        self.device = torch.device(device)

    def __call__(self) -> torch.Tensor:
        noise = torch.empty((len(self.generators), *self.sample_shape))  # (B, *sample_shape)
        for row, generator in zip(noise, self.generators):
            torch.randn(self.sample_shape, generator=generator, out=row)
        return noise.to(self.device)

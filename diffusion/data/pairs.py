"""Pairs (sample, noise) as a data set: what a reflowed flow trains on (:class:`~diffusion.methods.flow_matching.
PairedFlowMatching` unpacks each row)."""

from __future__ import annotations

from typing import Literal

import torch

from diffusion.data.base import BaseData, DataSplits
from diffusion.data.split import train_val_indices


class PairedData(BaseData):
    """Rows pack a sample and its noise along dim 1 (``(N, 2 C, H, W)`` or ``(N, 2 D)``); ``sample_shape`` is one
    sample's, so the network is built for samples. Split like every data set (:func:`train_val_indices`).
    """

    def __init__(self, samples: torch.Tensor, noise: torch.Tensor, labels: torch.Tensor | None,
                 kind: Literal["image", "points"], num_classes: int = 0, val_fraction: float = 0.05,
                 split_seed: int = 0) -> None:
        super().__init__()
        assert samples.shape == noise.shape and samples.dim() >= 2, (samples.shape, noise.shape)
        self.samples, self.noise, self.labels = samples.float(), noise.float(), labels
        self.kind, self._num_classes = kind, num_classes
        self.val_fraction, self.split_seed = val_fraction, split_seed

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.samples.shape[1:])

    @property
    def num_classes(self) -> int:
        return self._num_classes

    def _load(self) -> DataSplits:
        train, val = train_val_indices(len(self.samples), self.val_fraction, self.split_seed)
        return DataSplits.from_indices(torch.cat([self.samples, self.noise], dim=1), self.labels, train, val)

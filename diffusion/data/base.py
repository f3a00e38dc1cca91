"""What every data set gives the trainer, sampler and evaluator."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import torch


@dataclass(frozen=True)
class DataSplits:
    """Train and validation data held as whole tensors (small data sets are batched by index, not by workers).

    ``train``/``val`` are float32, ``(N, C, H, W)`` in ``[-1, 1]`` for images or ``(N, D)`` for points.
    Labels are LongTensors of shape ``(N,)`` when the data set has classes, else ``None``.
    """

    train: torch.Tensor
    val: torch.Tensor
    train_labels: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None

    @classmethod
    def from_indices(
        cls,
        data: torch.Tensor,
        labels: torch.Tensor | None,
        train_idx: torch.Tensor,
        val_idx: torch.Tensor,
    ) -> DataSplits:
        """Select the rows of ``data`` (and ``labels``) named by the index tensors of ``train_val_indices``."""
        if labels is None:
            return cls(data[train_idx], data[val_idx])
        return cls(data[train_idx], data[val_idx], labels[train_idx], labels[val_idx])


class BaseData(ABC):
    """A data set: its sample shape, its kind, its classes, and its fixed train/validation split.

    Constructors check their arguments (raising :class:`~diffusion.validation.ConfigError`) without loading
    anything heavy; :meth:`load` does the work once and caches the result.
    """

    kind: Literal["image", "points"]

    def __init__(self) -> None:
        self._splits: DataSplits | None = None

    @property
    @abstractmethod
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample: ``(C, H, W)`` for images, ``(D,)`` for points."""

    @property
    def num_classes(self) -> int:
        """Number of classes, 0 when the data set has no labels."""
        return 0

    @property
    def class_names(self) -> list[str]:
        return [str(i) for i in range(self.num_classes)]

    def load(self) -> DataSplits:
        if self._splits is None:
            self._splits = self._load()
        return self._splits

    @abstractmethod
    def _load(self) -> DataSplits:
        """Build the splits; called once by :meth:`load`."""

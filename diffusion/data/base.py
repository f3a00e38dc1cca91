"""What every data set gives the trainer, sampler and evaluator."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import torch


@dataclass(frozen=True)
class DataSplits:
    """Train and validation data held as whole tensors (small data sets are batched by index, not by workers).

    ``train``/``val``: float32 ``(N, C, H, W)`` in ``[-1, 1]`` or ``(N, D)`` points; large image sets keep uint8
    pixels (4x less memory) that :meth:`BaseData.prepare_batch` converts. Labels: ``(N,)`` LongTensor or ``None``.
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

    Constructors only check their arguments (ConfigError); :meth:`load` does the work once and caches it.
    """

    kind: Literal["image", "points"]
    #: Flip training batches horizontally at random in :meth:`prepare_batch` (DDPM's CIFAR-10 setting).
    random_flip: bool = False

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

    @property
    def scored_data(self) -> BaseData:
        """The data evaluators score samples against: this data set; latents: the images they encode."""
        return self

    @property
    def random_batches(self) -> bool:
        """True when :meth:`prepare_batch` draws at random (flips; latents' z ~ q(z | x)): the trainer then seeds
        each batch (:func:`batch_generator_seed`), so a resumed run draws the same."""
        return self.random_flip

    def loss_inputs(self, index: torch.Tensor, generator_seed: int | None = None) -> dict[str, torch.Tensor]:
        """What the training loss takes beside the train split's rows ``index``, as keyword arguments of
        ``compute_loss``, drawn as :meth:`prepare_batch` drew from ``generator_seed``: nothing here (latents stored with
        REPA's encoder features: ``encoder_features``)."""
        return {}

    @property
    def uint8_splits(self) -> bool:
        """True when :meth:`load` returns uint8 images (0..255) that :meth:`prepare_batch` converts per batch."""
        return False

    def prepare_batch(self, x: torch.Tensor, generator_seed: int | None = None) -> torch.Tensor:
        """A batch of rows from :meth:`load`'s splits, made ready for the model: the per-batch half of the data.

        uint8 rows become float32 ``p / 255 * 2 - 1`` on ``x``'s device. With ``random_flip`` and an integer
        ``generator_seed`` (:func:`batch_generator_seed`) each image is mirrored with probability 1/2 from a CPU
        generator, so a resumed run redraws the same flips; ``None`` (validation, evaluation) never flips.
        """
        if x.dtype == torch.uint8:
            x = x.float() / 255.0 * 2 - 1
        if self.random_flip and generator_seed is not None:
            x = random_horizontal_flip(x, generator_seed)
        return x

    def load(self) -> DataSplits:
        if self._splits is None:
            self._splits = self._load()
        return self._splits

    @abstractmethod
    def _load(self) -> DataSplits:
        """Build the splits; called once by :meth:`load`."""


def batch_generator_seed(seed: int, global_step: int, micro_batch: int = 0, rank: int = 0) -> int:
    """The integer seeding :meth:`BaseData.prepare_batch`'s flips for one (micro-)batch of one training step.

    A hash, not a sum (``seed + step`` would give run 0's step 1 the flips of run 1's step 0).
    """
    key = f"{seed}:{global_step}:{micro_batch}:{rank}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def random_horizontal_flip(x: torch.Tensor, generator_seed: int) -> torch.Tensor:
    """Mirror each image of ``x`` ``(B, C, H, W)`` along its width with probability 1/2, drawn on the CPU from
    ``torch.Generator().manual_seed(generator_seed)`` (the same flips on every device)."""
    if x.dim() != 4:
        raise ValueError(f"random_horizontal_flip needs images (B, C, H, W), got shape {tuple(x.shape)}")
    generator = torch.Generator().manual_seed(generator_seed)
    flip = (torch.rand(len(x), generator=generator) < 0.5).to(x.device)  # (B,)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)

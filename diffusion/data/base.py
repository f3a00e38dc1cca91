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

    ``train``/``val`` are float32, ``(N, C, H, W)`` in ``[-1, 1]`` for images or ``(N, D)`` for points; large image
    sets (``BaseData.uint8_splits``) keep ``(N, C, H, W)`` uint8 pixels 0..255 instead, 4x less memory, and every
    batch goes through :meth:`BaseData.prepare_batch` before it reaches a model or a metric.
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

    Constructors check their arguments (raising :class:`~diffusion.runtime.checks.ConfigError`) without loading
    anything heavy; :meth:`load` does the work once and caches the result.
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
    def uint8_splits(self) -> bool:
        """True when :meth:`load` returns uint8 images (0..255) that :meth:`prepare_batch` converts per batch."""
        return False

    def prepare_batch(self, x: torch.Tensor, generator_seed: int | None = None) -> torch.Tensor:
        """A batch of rows from :meth:`load`'s splits, made ready for the model: the per-batch half of the data.

        Contract with the caller (the trainer, the evaluators):

        * ``x`` is rows of ``splits.train`` or ``splits.val`` on any device, ``(B, C, H, W)`` or ``(B, D)``.
        * uint8 rows become float32 in ``[-1, 1]`` (``p / 255 * 2 - 1``) on ``x``'s device; float rows pass as is.
        * With ``random_flip`` and an integer ``generator_seed``, each image is mirrored left-right with
          probability 1/2, drawn from a CPU ``torch.Generator`` seeded with ``generator_seed``, so the flips are a
          pure function of the seed whatever the device. A training step passes
          ``batch_generator_seed(seed, global_step, micro_batch, rank)``: a killed run resumed at the same step
          redraws the same flips, bit-exact. ``generator_seed=None`` (validation, evaluation) never flips.
        * A float data set without ``random_flip`` returns ``x`` itself (no copy).
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

    A hash of the four integers (not a sum: ``seed + step`` would give run 0's step 1 the flips of run 1's step 0),
    in ``[0, 2**63)`` as ``torch.Generator.manual_seed`` accepts.
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

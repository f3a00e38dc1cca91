"""What MNIST and CIFAR-10 share: official train and test sets held as uint8 pixels, converted per batch."""

from __future__ import annotations

from abc import abstractmethod
from typing import Literal, NamedTuple, TypedDict

import torch

from diffusion.data.base import BaseData, DataSplits
from diffusion.data.split import train_val_indices
from diffusion.runtime.checks import ConfigError, check_choice, check_float, check_int

TestSet = Literal["val", "train"]
_TEST_SETS = ("val", "train")


class LabelledPixels(NamedTuple):
    """Images ``(N, C, H, W)`` uint8 0..255 and their labels ``(N,)`` int64."""

    images: torch.Tensor
    labels: torch.Tensor


class SplitOptions(TypedDict, total=False):
    """The :class:`Uint8ImageData` arguments that a data set passes on as they are."""

    test_set: TestSet
    val_fraction: float
    split_seed: int
    random_flip: bool


class Uint8ImageData(BaseData):
    """A labelled image data set with an official train set and (optionally) an official test set.

    ``test_set="val"`` makes the official test set the validation split, so floors are measured on unseen images
    as FID papers do; ``"train"`` joins it and holds out a seeded ``val_fraction``, as does a source without a test
    set. Settings: see conf/data/mnist.yaml.

    Raises:
        ConfigError: when an argument is out of range; the message names ``data.<argument>``.
    """

    kind = "image"

    def __init__(
        self, test_set: TestSet = "val", val_fraction: float = 0.1, split_seed: int = 0, random_flip: bool = False
    ) -> None:
        super().__init__()
        self.test_set: TestSet = check_choice(test_set, "data.test_set", _TEST_SETS)
        self.val_fraction = check_float(val_fraction, "data.val_fraction", 0.0, 1.0, inclusive=False)
        self.split_seed = check_int(split_seed, "data.split_seed")
        if not isinstance(random_flip, bool):
            raise ConfigError(f"data.random_flip must be true or false, got {random_flip!r}")
        self.random_flip = random_flip

    @property
    def uint8_splits(self) -> bool:
        return True

    @property
    def num_classes(self) -> int:
        return 10

    @abstractmethod
    def _read(self) -> tuple[LabelledPixels, LabelledPixels | None]:
        """The official ``(train, test)`` sets; ``test`` is None when the source has none."""

    def _load(self) -> DataSplits:
        train, test = self._read()
        if test is not None and self.test_set == "val":
            return DataSplits(train.images, test.images, train.labels, test.labels)
        if test is not None:
            train = LabelledPixels(torch.cat([train.images, test.images]), torch.cat([train.labels, test.labels]))
        train_idx, val_idx = train_val_indices(len(train.images), self.val_fraction, self.split_seed)
        return DataSplits.from_indices(train.images, train.labels, train_idx, val_idx)

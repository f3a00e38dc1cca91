"""scikit-learn's bundled 8x8 handwritten digits: a labelled image data set that needs no download."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from diffusion.data.base import BaseData, DataSplits
from diffusion.data.split import train_val_indices
from diffusion.runtime.checks import ConfigError, check_float, check_int

# load_digits() stores ink intensity as integers 0..16 (4x4 blocks of a 32x32 bitmap counted).
_MAX_INTENSITY = 16.0


class DigitsData(BaseData):
    """1,797 grayscale digits (UCI optdigits), labels 0..9, scaled to ``[-1, 1]``.
    Settings: see conf/data/digits.yaml.

    Raises:
        ConfigError: when an argument is out of range; the message names ``data.<argument>``.
    """

    kind = "image"

    def __init__(
        self, image_size: int = 8, val_fraction: float = 0.1, split_seed: int = 0, channels: int = 1
    ) -> None:
        super().__init__()
        if isinstance(channels, bool) or channels != 1:
            raise ConfigError(f"data.channels must be 1 for the digits (they are grayscale), got {channels!r}")
        self.channels = 1
        self.image_size = check_int(image_size, "data.image_size", minimum=1)
        self.val_fraction = check_float(val_fraction, "data.val_fraction", 0.0, 1.0, inclusive=False)
        self.split_seed = check_int(split_seed, "data.split_seed")

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.channels, self.image_size, self.image_size)

    @property
    def num_classes(self) -> int:
        return 10

    def _load(self) -> DataSplits:
        images, targets = sklearn_digits()
        images = torch.from_numpy(images).float()  # (N, 8, 8), values 0..16
        x = rearrange(images / _MAX_INTENSITY * 2 - 1, "n h w -> n 1 h w")  # (N, 1, 8, 8) in [-1, 1]
        if self.image_size != x.shape[-1]:
            # Antialiased bilinear weights sum to one, yet float rounding can land just past +-1: clamp back.
            x = F.interpolate(
                x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False, antialias=True
            ).clamp(-1.0, 1.0)
        labels = torch.from_numpy(targets).long()  # (N,)
        train_idx, val_idx = train_val_indices(len(x), self.val_fraction, self.split_seed)
        return DataSplits.from_indices(x.contiguous(), labels, train_idx, val_idx)


def sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits (Alpaydin & Kaynak 1998: 1,797 8x8 images ``(N, 8, 8)`` float64 in 0..16 and
    their labels ``(N,)``), read from the CSV scikit-learn ships the way its ``load_digits`` reads it, without
    importing ``sklearn.datasets``, whose import takes about 1 s of every run's start-up; through ``load_digits``
    where the file is not where scikit-learn keeps it."""
    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if path is not None and path.is_file():
        table = np.loadtxt(path, delimiter=",")  # (N, 65): 64 pixels, then the label
        return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images, digits.target

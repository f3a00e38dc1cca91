"""Two-dimensional toy distributions (two moons, swiss roll): fast to train on and easy to look at."""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

import numpy as np
import torch

from diffusion.data.base import BaseData, DataSplits
from diffusion.data.split import train_val_indices
from diffusion.runtime.checks import check_float, check_int

# numpy's RandomState seed (the one sklearn's generators take) must fit in an unsigned 32-bit integer.
_MAX_SEED = 2**32 - 1


class PointsData(BaseData):
    """A generated 2-D point cloud, standardised to zero mean and unit std per axis.

    Unit scale matches the N(0, I) prior the schedules are tuned for (the raw swiss roll reaches about 13); the
    mean and std are the whole generated set's. Subclasses draw the raw points in :meth:`_generate` and set
    :attr:`default_noise`. Settings: see conf/data/moons.yaml.

    Raises:
        ConfigError: when an argument is out of range; the message names ``data.<argument>``.
    """

    kind = "points"
    default_noise: ClassVar[float]

    def __init__(
        self,
        num_samples: int = 8000,
        noise: float | None = None,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.num_samples = check_int(num_samples, "data.num_samples", minimum=2)
        self.noise = check_float(self.default_noise if noise is None else noise, "data.noise", minimum=0.0)
        self.val_fraction = check_float(val_fraction, "data.val_fraction", 0.0, 1.0, inclusive=False)
        self.split_seed = check_int(split_seed, "data.split_seed")
        self.seed = check_int(seed, "data.seed", minimum=0, maximum=_MAX_SEED)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (2,)

    @abstractmethod
    def _generate(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw points ``(num_samples, 2)`` and their integer labels ``(num_samples,)`` or ``None``."""

    def _load(self) -> DataSplits:
        raw, raw_labels = self._generate()
        points = torch.from_numpy(raw).double()  # (N, 2); float64 so the moments are exact before casting
        points = ((points - points.mean(dim=0)) / points.std(dim=0)).float()
        labels = None if raw_labels is None else torch.from_numpy(raw_labels).long()  # (N,)
        train_idx, val_idx = train_val_indices(len(points), self.val_fraction, self.split_seed)
        return DataSplits.from_indices(points, labels, train_idx, val_idx)


class MoonsData(PointsData):
    """Two interleaving half circles; labels say which moon (0 or 1) a point belongs to."""

    default_noise = 0.05

    @property
    def num_classes(self) -> int:
        return 2

    def _generate(self) -> tuple[np.ndarray, np.ndarray | None]:
        return two_moons(self.num_samples, self.noise, self.seed)


class SwissRollData(PointsData):
    """The swiss roll seen from above: sklearn's 3-D roll keeps its x and z axes (y is the roll's length)."""

    default_noise = 0.25

    def _generate(self) -> tuple[np.ndarray, np.ndarray | None]:
        return swiss_roll(self.num_samples, self.noise, self.seed)[:, [0, 2]], None  # the spiral lies in x-z


# The two generators below draw the points scikit-learn's make_moons and make_swiss_roll draw, value for value from
# the same seed (tests/data/test_data_sets.py holds them equal to scikit-learn's), written here because importing
# sklearn.datasets (it brings scipy.stats and pandas) takes about 1.3 s, longer than a whole moons run's training, and
# draws from Python's `random`: imported after seeding, it moved the RNG state a run's checkpoints carry, so a run in a
# fresh process and one in a process that had imported scikit-learn before differed.
def two_moons(num_samples: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaving half circles: points ``(N, 2)`` shuffled, with Gaussian noise of std ``noise``, and their
    moon ``(N,)``: the first ``N // 2`` points (before the shuffle) on the upper moon, label 0."""
    rng = np.random.RandomState(seed)
    upper, lower = num_samples // 2, num_samples - num_samples // 2
    angle_upper, angle_lower = np.linspace(0, np.pi, upper), np.linspace(0, np.pi, lower)
    x = np.append(np.cos(angle_upper), 1 - np.cos(angle_lower))
    y = np.append(np.sin(angle_upper), 1 - np.sin(angle_lower) - 0.5)
    points = np.stack([x, y], axis=1)
    labels = np.append(np.zeros(upper, dtype=np.intp), np.ones(lower, dtype=np.intp))
    order = np.arange(num_samples)
    rng.shuffle(order)
    points, labels = points[order], labels[order]
    return points + rng.normal(scale=noise, size=points.shape), labels


def swiss_roll(num_samples: int, noise: float, seed: int) -> np.ndarray:
    """The 3-D swiss roll ``(N, 3)``: angle t uniform in [1.5 pi, 4.5 pi], points (t cos t, h, t sin t) with the
    height h uniform in [0, 21], plus Gaussian noise of std ``noise`` on every coordinate."""
    rng = np.random.RandomState(seed)
    angle = 1.5 * np.pi * (1 + 2 * rng.uniform(size=num_samples))
    height = 21 * rng.uniform(size=num_samples)
    points = np.stack([angle * np.cos(angle), height, angle * np.sin(angle)])  # (3, N)
    return (points + noise * rng.standard_normal(size=(3, num_samples))).T

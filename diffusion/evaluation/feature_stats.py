"""Feature statistics files: the ``.npz`` of ``mu`` ``(D,)`` and ``sigma`` ``(D, D)`` that FID tools exchange
(pytorch-fid, torch-fidelity), so a reference computed once is reused by every evaluation; written and read here.
"""

from __future__ import annotations

import io
import os
import zipfile
from typing import NamedTuple

import numpy as np
import torch

from diffusion.evaluation.metrics import ArrayLike, frechet_distance
from diffusion.runtime.checks import ConfigError
from diffusion.storage.atomic import atomic_write_bytes


class FeatureStatistics(NamedTuple):
    """Mean ``(D,)`` and covariance ``(D, D)`` of features, float64 numpy arrays."""

    mu: np.ndarray
    sigma: np.ndarray


def feature_statistics(features: ArrayLike) -> FeatureStatistics:
    """Mean and unbiased covariance (``N - 1``, as FID tools compute them) of ``(N, D)`` features."""
    x = torch.as_tensor(features).detach().cpu().double()
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"feature statistics need features (N >= 2, D), got shape {tuple(x.shape)}")
    return FeatureStatistics(x.mean(0).numpy(), torch.cov(x.T).reshape(x.shape[1], x.shape[1]).numpy())


def save_feature_statistics(path: str | os.PathLike[str], stats: FeatureStatistics) -> None:
    """Write ``stats`` as an uncompressed ``.npz`` with keys ``mu`` and ``sigma`` (float64), all at once: a killed
    write leaves the old file or none, never half of one."""
    buffer = io.BytesIO()
    np.savez(buffer, mu=np.asarray(stats.mu, dtype=np.float64), sigma=np.asarray(stats.sigma, dtype=np.float64))
    atomic_write_bytes(path, buffer.getvalue())


def load_feature_statistics(path: str | os.PathLike[str], key: str = "evaluator.reference_stats") -> FeatureStatistics:
    """Read an ``.npz`` with ``mu`` ``(D,)`` and ``sigma`` ``(D, D)`` (no pickles); ConfigError naming ``key``."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [name for name in ("mu", "sigma") if name not in archive.files]
            if missing:
                raise ConfigError(f"{key}: '{path}' has no {' or '.join(missing)} array (keys: {archive.files})")
            mu, sigma = archive["mu"].astype(np.float64), archive["sigma"].astype(np.float64)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{key}: cannot read feature statistics '{path}': {err}") from err
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise ConfigError(f"{key}: '{path}' holds mu {mu.shape} and sigma {sigma.shape}; expected (D,) and (D, D)")
    return FeatureStatistics(mu, sigma)


def frechet_distance_between_files(path1: str | os.PathLike[str], path2: str | os.PathLike[str]) -> float:
    """:func:`~diffusion.evaluation.metrics.frechet_distance` between two statistics files (FID from ``.npz``)."""
    first, second = load_feature_statistics(path1, "stats file"), load_feature_statistics(path2, "stats file")
    return frechet_distance(first.mu, first.sigma, second.mu, second.sigma)

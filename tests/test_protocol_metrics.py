"""Paper-protocol metrics: improved precision/recall, the memorization score, and FD between .npz statistics."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from diffusion.evaluation import (
    FeatureStatistics,
    feature_statistics,
    frechet_distance_between_files,
    load_feature_statistics,
    memorization_score,
    precision_recall,
    save_feature_statistics,
)
from diffusion.validation import ConfigError


def _gaussian(n: int, dim: int = 4, shift: float = 0.0, scale: float = 1.0, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale + shift


def test_precision_recall_by_hand():
    # Real points on a line 0, 1, 2, 3: with k=1 every radius is 1, so the real manifold is [-1, 4].
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    fake = torch.tensor([[0.5], [3.9], [4.5], [10.0]])  # 2 of 4 inside [-1, 4]
    # Fake radii (k=1): 3.4, 0.6, 0.6, 5.5 -> balls cover [-2.9, 3.9], [3.3, 5.1], [4.5, 15.5]: all reals inside.
    assert precision_recall(real, fake, k=1) == (0.5, 1.0)


def test_precision_recall_separate_quality_from_coverage():
    real = _gaussian(600, seed=0)
    same = precision_recall(real, _gaussian(600, seed=1))
    assert same.precision > 0.9 and same.recall > 0.9
    collapsed = precision_recall(real, _gaussian(600, scale=0.2, seed=2))  # good samples, little variety
    assert collapsed.precision > 0.9 and collapsed.recall < 0.2
    far = precision_recall(real, _gaussian(600, shift=6.0, seed=3))
    assert far.precision < 0.05 and far.recall < 0.05


def test_precision_recall_needs_more_than_k_rows():
    with pytest.raises(ValueError, match="at least 4"):
        precision_recall(_gaussian(3), _gaussian(10), k=3)


def test_memorization_flags_near_copies_not_fresh_items():
    train, heldout, fresh = _gaussian(2000, dim=8, seed=0), _gaussian(500, dim=8, seed=1), _gaussian(500, dim=8, seed=2)
    copies = train[:500] + 1e-3 * _gaussian(500, dim=8, seed=3)
    memorized = memorization_score(copies, train, heldout)
    generalising = memorization_score(fresh, train, heldout)
    assert memorized.score == 1.0
    assert generalising.score < 0.05 and generalising.threshold == memorized.threshold > 0
    half = memorization_score(torch.cat([copies[:250], fresh[:250]]), train, heldout)
    assert 0.49 < half.score < 0.56


def _scipy_frechet(mu1, sigma1, mu2, sigma2) -> float:
    """The closed form with scipy's general matrix square root (as the TTUR reference computes it)."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1 + sigma2 - 2 * covmean))


def test_frechet_distance_between_npz_files_matches_scipy(tmp_path):
    rng = np.random.default_rng(0)
    stats = []
    for i, path in enumerate((tmp_path / "a.npz", tmp_path / "b.npz")):
        features = rng.normal(size=(200, 16)) @ rng.normal(size=(16, 16)) + i
        stats.append(feature_statistics(features))
        save_feature_statistics(path, stats[-1])
        with np.load(path) as archive:  # the layout FID tools read: two float64 arrays
            assert sorted(archive.files) == ["mu", "sigma"] and archive["sigma"].shape == (16, 16)
        assert np.allclose(stats[-1].sigma, np.cov(features, rowvar=False))
    expected = _scipy_frechet(*stats[0], *stats[1])
    assert frechet_distance_between_files(tmp_path / "a.npz", tmp_path / "b.npz") == pytest.approx(expected, abs=1e-6)
    assert frechet_distance_between_files(tmp_path / "a.npz", tmp_path / "a.npz") == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("fault", ["missing", "no_sigma", "shape", "pickle"])
def test_bad_statistics_file_is_one_line_naming_it(tmp_path, fault):
    path = tmp_path / "ref.npz"
    if fault == "no_sigma":
        np.savez(path, mu=np.zeros(3))
    elif fault == "shape":
        np.savez(path, mu=np.zeros(3), sigma=np.eye(4))
    elif fault == "pickle":
        np.savez(path, mu=np.array([object()], dtype=object), sigma=np.eye(1))
    with pytest.raises(ConfigError, match=r"evaluator\.reference_stats: .*ref\.npz") as err:
        load_feature_statistics(path)
    assert "\n" not in str(err.value)


def test_statistics_round_trip(tmp_path):
    stats = FeatureStatistics(np.arange(3.0), np.eye(3) * 2)
    save_feature_statistics(tmp_path / "s.npz", stats)
    loaded = load_feature_statistics(tmp_path / "s.npz")
    assert np.array_equal(loaded.mu, stats.mu) and np.array_equal(loaded.sigma, stats.sigma)

"""Closed-form and statistical checks of the sample-quality metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch

from diffusion.evaluation import metrics
from diffusion.evaluation.class_metrics import class_coverage, class_histogram, class_kl
from diffusion.evaluation.metrics import (
    PointCloudReference,
    energy_distance,
    frechet_distance,
    frechet_distance_from_features,
    kernel_inception_distance,
    mmd_rbf,
    sliced_wasserstein,
)
from diffusion.runtime.checks import ConfigError


def _gaussian(num: int, dim: int, shift: float = 0.0, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(num, dim, generator=generator, dtype=torch.float64) + shift


def _random_psd(dim: int, rank: int, seed: int) -> torch.Tensor:
    factor = _gaussian(dim, rank, seed=seed)
    return factor @ factor.T  # (dim, dim), rank <= rank


# ------------------------------------------------------------------------------------------------------------ FD


def test_frechet_distance_of_identical_gaussians_is_zero() -> None:
    mu, sigma = _gaussian(1, 5, seed=1)[0], _random_psd(5, 5, seed=2)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_diagonal_closed_form() -> None:
    # Diagonal covariances commute, so (S1 S2)^{1/2} = diag(sqrt(a b)) and the trace term is sum (sqrt a - sqrt b)^2.
    a, b = np.array([1.0, 4.0, 0.25, 0.0]), np.array([9.0, 1.0, 0.25, 2.0])
    mu1, mu2 = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 1.0, 0.0, 0.5])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_matches_scipy_sqrtm_for_full_covariances() -> None:
    mu1, mu2 = _gaussian(2, 6, seed=3)
    sigma1, sigma2 = _random_psd(6, 6, seed=4).numpy(), _random_psd(6, 6, seed=5).numpy()
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2).real
    expected = float((mu1 - mu2).square().sum()) + np.trace(sigma1 + sigma2 - 2 * covmean)
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-8)


@pytest.mark.parametrize("rank1, rank2", [(8, 8), (3, 8), (2, 5), (0, 4)])
def test_frechet_distance_symmetric_and_non_negative_including_singular(rank1: int, rank2: int) -> None:
    for seed in range(5):
        mu1, mu2 = _gaussian(2, 8, seed=seed)
        sigma1 = _random_psd(8, rank1, seed=10 + seed)
        sigma2 = _random_psd(8, rank2, seed=20 + seed)
        forward, backward = frechet_distance(mu1, sigma1, mu2, sigma2), frechet_distance(mu2, sigma2, mu1, sigma1)
        assert math.isfinite(forward) and forward >= 0.0
        assert forward == pytest.approx(backward, rel=1e-7, abs=1e-9)


def test_frechet_distance_from_features_recovers_gaussian_shift() -> None:
    # Same covariance I, mean shift 0.5 in each of 4 dimensions: FD -> 4 * 0.25 = 1 as N grows.
    x, y = _gaussian(20000, 4, seed=0), _gaussian(20000, 4, shift=0.5, seed=1)
    assert frechet_distance_from_features(x, y) == pytest.approx(1.0, abs=0.03)
    assert frechet_distance_from_features(x, x) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="frechet_distance"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="feature dimension"):
        frechet_distance_from_features(np.zeros((5, 3)), np.zeros((5, 4)))


# ----------------------------------------------------------------------------------------------------------- KID


def _brute_force_unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    def kernel(a: np.ndarray, b: np.ndarray) -> float:
        return (a @ b / x.shape[1] + 1.0) ** 3

    n, m = len(x), len(y)
    xx = sum(kernel(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(kernel(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(kernel(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


def test_fd_from_features_remembers_the_reference_gaussian_but_not_one_written_in_place() -> None:
    x, y = _gaussian(40, 4, seed=0), _gaussian(60, 4, shift=0.5, seed=1)

    def direct(a: torch.Tensor, b: torch.Tensor) -> float:
        return frechet_distance(a.mean(0), torch.cov(a.T), b.mean(0), torch.cov(b.T))

    first = frechet_distance_from_features(x, y)
    assert first == direct(x, y) and frechet_distance_from_features(x[:20], y) == direct(x[:20], y)  # served kept
    assert frechet_distance_from_features(x, y.clone()) == first  # an equal reference, another tensor
    y.mul_(2.0)  # the kept tensor itself changed: its Gaussian is computed again
    assert frechet_distance_from_features(x, y) == direct(x, y) != first


def test_kid_with_one_full_subset_matches_brute_force_formula() -> None:
    x, y = _gaussian(12, 3, seed=0).numpy(), _gaussian(12, 3, shift=0.3, seed=1).numpy()
    kid = kernel_inception_distance(x, y, num_subsets=1, subset_size=12)
    assert kid.mean == pytest.approx(_brute_force_unbiased_mmd2(x, y), rel=1e-10)


def test_kid_with_every_sample_in_each_subset_matches_the_subset_by_subset_estimates() -> None:
    # subset_size = len(x) takes the shortcut (x-x term once, x-y by column means); the estimates are those of
    # brute-force MMD^2 on each subset pair, drawn as the function draws them; the reference term is remembered,
    # and a reference changed in place is not served the old term.
    x, y = _gaussian(10, 3, seed=0), _gaussian(25, 3, shift=0.3, seed=1)
    _, y_idx = metrics._draw_subsets(10, 25, 4, 10, seed=5)
    expected = [_brute_force_unbiased_mmd2(x.numpy(), y[rows].numpy()) for rows in y_idx]
    for _ in range(2):
        kid = kernel_inception_distance(x, y, num_subsets=4, subset_size=10, seed=5)
        assert kid.mean == pytest.approx(np.mean(expected), rel=1e-10)
        assert kid.std_error == pytest.approx(np.std(expected, ddof=1) / 2, rel=1e-8)
    y.mul_(2.0)
    moved = np.mean([_brute_force_unbiased_mmd2(x.numpy(), y[rows].numpy()) for rows in y_idx])
    assert kernel_inception_distance(x, y, num_subsets=4, subset_size=10, seed=5).mean == pytest.approx(moved, rel=1e-10)


def test_kid_is_unbiased_for_equal_distributions() -> None:
    # Independent data-set pairs from one distribution: the average estimate sits within a few standard errors of 0.
    estimates = [
        kernel_inception_distance(_gaussian(150, 8, seed=2 * i), _gaussian(150, 8, seed=2 * i + 1), num_subsets=5).mean
        for i in range(40)
    ]
    mean, std_error = np.mean(estimates), np.std(estimates, ddof=1) / np.sqrt(len(estimates))
    assert abs(mean) < 4 * std_error


def test_kid_is_clearly_positive_for_shifted_distributions() -> None:
    kid = kernel_inception_distance(_gaussian(400, 8, seed=0), _gaussian(400, 8, shift=0.5, seed=1), num_subsets=20)
    assert kid.mean > 0 and kid.mean > 20 * kid.std_error


def test_kid_is_deterministic_given_seed_and_checks_arguments() -> None:
    x, y = _gaussian(60, 4, seed=0), _gaussian(60, 4, seed=1)
    kwargs = {"num_subsets": 7, "subset_size": 30, "seed": 3}
    assert kernel_inception_distance(x, y, **kwargs) == kernel_inception_distance(x, y, **kwargs)
    with pytest.raises(ConfigError, match="kernel_inception_distance.subset_size"):
        kernel_inception_distance(x, y, subset_size=61)
    with pytest.raises(ConfigError, match="kernel_inception_distance.num_subsets"):
        kernel_inception_distance(x, y, num_subsets=0)


# ------------------------------------------------------------------------------------------------- SW, MMD, energy


def test_sliced_wasserstein_of_a_shift_is_norm_over_sqrt_dim() -> None:
    # Per direction theta, W2(theta.X, theta.(X + m)) = |m.theta|; for theta uniform on S^1,
    # E[(m.theta)^2] = |m|^2 E[cos^2] = |m|^2 / 2, so SW2 = |m| / sqrt(2) in 2-D (|m| / sqrt(D) in general).
    m = torch.tensor([1.5, -2.0], dtype=torch.float64)  # |m| = 2.5
    x = _gaussian(500, 2, seed=0)
    expected = 2.5 / math.sqrt(2)
    assert sliced_wasserstein(x, x + m, num_projections=2000) == pytest.approx(expected, rel=0.03)
    # Independent samples: the realised shift is the difference of sample means (here 3% short of |m|, a 2-sigma
    # draw); shape differences between the clouds add only O(1/sqrt(N)) to each 1-D W2.
    x, y = _gaussian(2000, 2, seed=2), _gaussian(2000, 2, seed=1) + m
    realised = (y.mean(0) - x.mean(0)).norm().item() / math.sqrt(2)
    assert sliced_wasserstein(x, y, num_projections=1000) == pytest.approx(realised, rel=0.04)
    assert sliced_wasserstein(x, x) == 0.0


def test_sliced_wasserstein_unequal_sizes_match_replicated_equal_sizes() -> None:
    # Repeating each of N points M times (and each of M points N times) leaves both empirical measures unchanged.
    x, y = _gaussian(4, 3, seed=0), _gaussian(6, 3, shift=1.0, seed=1)
    unequal = sliced_wasserstein(x, y, num_projections=50, seed=7)
    replicated = sliced_wasserstein(x.repeat_interleave(6, 0), y.repeat_interleave(4, 0), num_projections=50, seed=7)
    assert unequal == pytest.approx(replicated, rel=1e-10)


def test_mmd_rbf_near_zero_for_same_distribution_and_positive_for_shift() -> None:
    same = mmd_rbf(_gaussian(400, 2, seed=0), _gaussian(400, 2, seed=1))
    shifted = mmd_rbf(_gaussian(400, 2, seed=0), _gaussian(400, 2, shift=1.0, seed=1))
    assert abs(same) < 0.01
    assert shifted > 0.1


def test_mmd_rbf_matches_brute_force_with_fixed_bandwidth() -> None:
    x, y = _gaussian(7, 2, seed=0).numpy(), _gaussian(5, 2, shift=0.5, seed=1).numpy()

    def k(a: np.ndarray, b: np.ndarray) -> float:
        return math.exp(-np.sum((a - b) ** 2) / (2 * 0.8**2))

    xx = sum(k(a, b) for i, a in enumerate(x) for j, b in enumerate(x) if i != j) / (7 * 6)
    yy = sum(k(a, b) for i, a in enumerate(y) for j, b in enumerate(y) if i != j) / (5 * 4)
    xy = sum(k(a, b) for a in x for b in y) / (7 * 5)
    assert mmd_rbf(x, y, bandwidth=0.8) == pytest.approx(xx + yy - 2 * xy, rel=1e-10)
    with pytest.raises(ConfigError, match="mmd_rbf.bandwidth"):
        mmd_rbf(x, y, bandwidth=0.0)


def test_energy_distance_zero_symmetric_positive() -> None:
    x, y = _gaussian(300, 3, seed=0), _gaussian(200, 3, shift=1.0, seed=1)
    assert energy_distance(x, x) == 0.0
    assert energy_distance(x, y) == pytest.approx(energy_distance(y, x), rel=1e-12)
    assert energy_distance(x, y) > 0.5


def test_energy_distance_matches_scipy_in_one_dimension() -> None:
    # scipy returns the square root of the same V-statistic for 1-D samples.
    x, y = _gaussian(50, 1, seed=0), _gaussian(30, 1, shift=0.7, seed=1)
    expected = scipy.stats.energy_distance(x[:, 0].numpy(), y[:, 0].numpy()) ** 2
    assert energy_distance(x, y) == pytest.approx(expected, rel=1e-10)


def test_a_kept_reference_scores_every_cloud_as_the_functions_do_to_the_bit() -> None:
    # An evaluator scores each chunk and bootstrap resample against one reference: its terms are computed once.
    y = _gaussian(300, 2, seed=0)
    reference = PointCloudReference(y, num_projections=64, seed=3, bandwidth=0.7)
    for x in (_gaussian(20, 2, shift=0.3, seed=1), _gaussian(500, 2, seed=2), y, _gaussian(20, 2, shift=0.3, seed=1)):
        assert reference.sliced_wasserstein(x) == sliced_wasserstein(x, y, num_projections=64, seed=3)
        assert reference.mmd(x) == mmd_rbf(x, y, bandwidth=0.7)
        assert reference.energy(x) == energy_distance(x, y)
    assert reference.sliced_wasserstein(y) == 0.0 and reference.energy(y) == 0.0
    with pytest.raises(ValueError, match="feature dimension"):
        reference.energy(_gaussian(20, 3, seed=1))
    with pytest.raises(ValueError, match="needs a bandwidth"):
        PointCloudReference(y).mmd(y)
    kept = metrics.point_cloud_reference(y, 64, 3, 0.7)  # remembered for an equal reference and settings
    assert metrics.point_cloud_reference(y.clone(), 64, 3, 0.7) is kept
    assert metrics.point_cloud_reference(y, 64, 3, 0.5) is not kept
    assert metrics.point_cloud_reference(y * 2, 64, 3, 0.7) is not kept


# ------------------------------------------------------------------------------------------------ class histograms


def test_class_coverage_counts_classes_above_threshold() -> None:
    pred = np.array([0] * 500 + [1] * 480 + [2] * 10 + [3] * 9 + [4] * 1)  # 1000 labels
    assert class_coverage(pred, num_classes=10) == pytest.approx(0.3)  # classes 0, 1, 2 hold >= 1%
    assert class_coverage(pred, num_classes=10, min_fraction=0.0) == pytest.approx(1.0)
    assert class_coverage(np.arange(10).repeat(3), num_classes=10) == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="class_coverage.min_fraction"):
        class_coverage(pred, num_classes=10, min_fraction=2.0)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        class_coverage(pred, num_classes=4)


def test_class_kl_on_hand_made_histograms() -> None:
    uniform = torch.arange(10).repeat(20)  # 200 labels, 20 per class
    assert class_kl(uniform, uniform, num_classes=10) == pytest.approx(0.0, abs=1e-12)
    # Collapse onto two classes against a uniform reference: KL = sum 1/2 log((1/2) / (1/10)) = log 5.
    collapsed = torch.tensor([3, 7] * 50)
    assert class_kl(collapsed, uniform, num_classes=10) == pytest.approx(math.log(5), abs=3e-4)
    # A float reference is taken as a histogram; counts and probabilities agree with label vectors.
    assert class_kl(collapsed, torch.full((10,), 20.0), num_classes=10) == pytest.approx(math.log(5), abs=3e-4)
    assert class_kl(collapsed, np.full(10, 0.1), num_classes=10) == pytest.approx(math.log(5), abs=3e-4)
    # A class missing from the reference costs p log(p / eps) instead of infinity.
    assert math.isfinite(class_kl(uniform, collapsed, num_classes=10))
    assert class_histogram(collapsed, 10).sum().item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="histogram"):
        class_kl(collapsed, np.full(9, 0.1), num_classes=10)

"""The bootstrap standard error against closed forms on Gaussian features, and the evaluator's error bars."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion.evaluation.uncertainty import bootstrap_std_errors, ratio_interval

N, D, SIGMA = 400, 8, 1.5


def _gaussian(mean: float = 0.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    return mean + SIGMA * torch.randn(N, D, generator=generator, dtype=torch.float64)


def test_bootstrap_error_of_a_mean_is_sigma_over_root_n() -> None:
    rows = _gaussian()
    errors = bootstrap_std_errors(rows, lambda r: {"mean": r[:, 0].mean().item()}, resamples=400, seed=0)
    assert errors["mean"] == pytest.approx(SIGMA / math.sqrt(N), rel=0.12)


def test_bootstrap_error_of_the_frechet_mean_term_matches_the_delta_method() -> None:
    # FD's mean term ||x_bar - mu_ref||^2 with x ~ N(mu, sigma^2 I), reference mean 0: x_bar ~ N(mu, sigma^2 I / N),
    # so Var = 4 sigma^2 ||mu||^2 / N + 2 D sigma^4 / N^2 (a noncentral chi-square scaled by sigma^2 / N).
    mu = 0.3
    rows = _gaussian(mean=mu)
    closed = math.sqrt(4 * SIGMA**2 * D * mu**2 / N + 2 * D * SIGMA**4 / N**2)
    errors = bootstrap_std_errors(rows, lambda r: {"fd_mean": r.mean(0).square().sum().item()}, 400, seed=1)
    assert errors["fd_mean"] == pytest.approx(closed, rel=0.15)


def test_bootstrap_is_seeded_and_needs_two_resamples() -> None:
    rows, statistic = _gaussian(), (lambda r: {"m": r.mean().item()})
    assert bootstrap_std_errors(rows, statistic, 20, seed=5) == bootstrap_std_errors(rows, statistic, 20, seed=5)
    with pytest.raises(ValueError, match="2 resamples"):
        bootstrap_std_errors(rows, statistic, 1, seed=0)


def test_ratio_interval_is_the_delta_method() -> None:
    interval = ratio_interval(3.0, 0.3, 2.0, 0.1)
    assert interval is not None and interval.estimate == 1.5
    assert interval.std_error == pytest.approx(math.sqrt(0.3**2 + 1.5**2 * 0.1**2) / 2.0)
    assert interval.low == pytest.approx(1.5 - 1.959964 * interval.std_error)
    assert ratio_interval(1.0, 0.1, -0.01, 0.01) is None and ratio_interval(1.0, None, 0.0, None) is None
    assert ratio_interval(1.0, 0.1, 0.0012, 0.0014) is None  # a floor within its error of 0: KID on real data

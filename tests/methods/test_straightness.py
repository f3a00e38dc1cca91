"""Straightness S(Z) in closed form: 0 for straight constant-speed paths (data at one point), the 1-D integral of
the Gaussian-to-Gaussian linear path otherwise; a method that is not a flow is refused."""

from __future__ import annotations

import pytest
import torch
from gaussian_flow import GaussianOracle

from diffusion.evaluation.straightness import straightness
from diffusion.methods import EDM, FlowMatching
from diffusion.runtime.checks import ConfigError


def test_paths_to_a_single_point_are_straight():
    method = FlowMatching()
    noise = torch.randn(16, 3, dtype=torch.float64)
    result = straightness(method, GaussianOracle(method, 0.5, 0.0), noise, steps=10)
    assert result.mean < 1e-20 and result.per_sample.shape == (16,)


def test_gaussian_to_gaussian_paths_match_their_closed_form():
    # x_t = t mu + g(t) z with g = sqrt(t^2 s^2 + (1 - t)^2): the gap is z (g'(t) - (s - 1)), E z^2 = 1.
    mu, s = 0.4, 0.3
    t = torch.linspace(0, 1, 200_001, dtype=torch.float64)
    g_prime = (t * s**2 - (1 - t)) / (t**2 * s**2 + (1 - t) ** 2).sqrt()
    expected = torch.trapezoid((g_prime - (s - 1)) ** 2, t).item()
    method = FlowMatching()
    noise = torch.randn(4000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    result = straightness(method, GaussianOracle(method, mu, s), noise, steps=400)
    assert abs(result.mean - expected) < 3 * result.standard_error + 0.01 * expected, (result.mean, expected)


def test_straightness_needs_a_flow_and_steps():
    with pytest.raises(ConfigError, match="evaluator.straightness"):
        straightness(EDM(), lambda x, t: x, torch.randn(2, 2))
    method = FlowMatching()
    with pytest.raises(ConfigError, match="evaluator.straightness_steps"):
        straightness(method, GaussianOracle(method, 0.0, 1.0), torch.randn(2, 2), steps=0)

"""The negative log-likelihood along the probability-flow ODE, in closed form: Gaussian data and the exact velocity
(flow matching) or the exact denoiser (DDPM's epsilon network, EDM's preconditioned one) give the Gaussian's
log-density to 1e-3 nats; Hutchinson's estimate agrees with the exact divergence within three of its standard
errors; dequantized levels are reported in bits per dimension; bad settings are one line naming their key."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
import torch
from gaussian_flow import GaussianOracle, log_density

from diffusion.evaluation.likelihood import negative_log_likelihood
from diffusion.methods import EDM, FlowMatching, GaussianDiffusion
from diffusion.methods.schedules import linear_betas
from diffusion.runtime.checks import ConfigError

TIGHT = {"atol": 1e-9, "rtol": 1e-9}


def points(n: int, dim: int, mu: float, s: float, seed: int = 0) -> torch.Tensor:
    return mu + s * torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("path, mu", [("linear", 0.7), ("cosine", 0.7), ("vp", 0.0)])  # vp: alpha_0 > 0, mu 0
@pytest.mark.parametrize("prediction", ["velocity", "x0"])
def test_a_flow_with_its_exact_velocity_gives_the_gaussian_log_density(path, mu, prediction):
    method, s = FlowMatching(path, prediction), 0.4
    x = points(16, 2, mu, s)
    result = negative_log_likelihood(method, GaussianOracle(method, mu, s), x, **TIGHT)
    torch.testing.assert_close(result.per_point, -log_density(x, mu, s), atol=1e-3, rtol=0)
    assert result.unit == "nats" and result.hutchinson_standard_error == 0 and result.nfe > 6


def sigma_space_denoiser(x: torch.Tensor, sigma: torch.Tensor | float, s: float) -> torch.Tensor:
    """E[y | y + sigma n = x] for y ~ N(0, s^2 I)."""
    return s**2 / (s**2 + sigma**2) * x


def test_ddpm_and_edm_with_their_exact_networks_give_the_smoothed_gaussian_log_density():
    s = 0.5
    x = points(16, 2, 0.0, s)
    edm = EDM(sigma_data=s)

    def edm_network(x_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        sigma = (4 * c_noise.double()).exp()[:, None]
        c_skip, c_out, c_in, _ = edm.preconditioning(sigma)
        x_sigma = x_in / c_in
        return (sigma_space_denoiser(x_sigma, sigma, s) - c_skip * x_sigma) / c_out

    ddpm = GaussianDiffusion(partial(linear_betas), num_timesteps=1000)
    log_sigmas = ddpm.sigmas.log().numpy()

    def epsilon_network(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        sigma = torch.from_numpy(np.exp(np.interp(t.double().numpy(), np.arange(1000), log_sigmas)))[:, None]
        x_sigma = x_t * (1 + sigma**2).sqrt()
        return (x_sigma - sigma_space_denoiser(x_sigma, sigma, s)) / sigma  # the noise in x

    for method, network in ((edm, edm_network), (ddpm, epsilon_network)):
        smoothed = math.sqrt(s**2 + method.sigma_min**2)  # the ODE starts at sigma_min
        result = negative_log_likelihood(method, network, x, **TIGHT)
        torch.testing.assert_close(result.per_point, -log_density(x, 0.0, smoothed), atol=1e-3, rtol=0)
        assert method.clip_denoised  # restored after the unclipped solve


class Mixing(GaussianOracle):
    """The exact velocity plus a smooth term mixing the coordinates: a Jacobian that is not diagonal, so
    Rademacher probes have a variance (for a diagonal one they are exact)."""

    def __init__(self, method: FlowMatching, mu: float, s: float, dim: int) -> None:
        super().__init__(method, mu, s)
        self.mix = torch.randn(dim, dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64) / dim

    def forward(self, x_t: torch.Tensor, time: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(x_t, time) + 0.3 * torch.tanh(x_t @ self.mix)


def test_hutchinson_agrees_with_the_exact_divergence_within_three_standard_errors():
    method, mu, s = FlowMatching(), 0.3, 0.6
    x = points(24, 8, mu, s)
    oracle = Mixing(method, mu, s, 8)
    exact = negative_log_likelihood(method, oracle, x, hutchinson_samples=0, atol=1e-7, rtol=1e-7)
    estimate = negative_log_likelihood(method, oracle, x, hutchinson_samples=8, atol=1e-7, rtol=1e-7,
                                       generator=torch.Generator().manual_seed(1))
    assert estimate.hutchinson_standard_error > 0
    assert abs(estimate.mean - exact.mean) < 3 * estimate.hutchinson_standard_error, (estimate, exact.mean)


def test_dequantized_levels_are_reported_in_bits_per_dimension():
    method, mu, s, width = FlowMatching(), 0.0, 0.5, 2 / 255
    levels = torch.round(points(8, 3, mu, s) / width) * width
    result = negative_log_likelihood(method, GaussianOracle(method, mu, s), levels, bin_width=width,
                                     generator=torch.Generator().manual_seed(3), **TIGHT)
    u = torch.rand(levels.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    nats = -log_density(levels + width * (u - 0.5), mu, s)
    torch.testing.assert_close(result.per_point, (nats - 3 * math.log(width)) / (3 * math.log(2)), atol=1e-3,
                               rtol=0)
    assert result.unit == "bits/dim"


@pytest.mark.parametrize("kwargs, key", [
    ({"hutchinson_samples": -1}, "evaluator.hutchinson_samples"), ({"bin_width": 0.0}, "evaluator.dequantization"),
])
def test_bad_likelihood_settings_are_one_line_naming_their_key(kwargs, key):
    method = FlowMatching()
    with pytest.raises(ConfigError, match=key):
        negative_log_likelihood(method, GaussianOracle(method, 0.0, 1.0), points(2, 2, 0.0, 1.0), **kwargs)


def test_a_zero_terminal_snr_schedule_has_no_gaussian_prior():
    method = GaussianDiffusion(partial(linear_betas, zero_terminal_snr=True), num_timesteps=20, prediction="v")
    with pytest.raises(ConfigError, match="evaluator.likelihood"):
        negative_log_likelihood(method, lambda x, t: x, points(2, 2, 0.0, 1.0))


def test_the_likelihood_can_be_asked_from_inference_mode():
    method, x = FlowMatching(), points(4, 2, 0.0, 1.0).float()
    expected = negative_log_likelihood(method, GaussianOracle(method, 0.0, 1.0), x).per_point
    with torch.inference_mode():
        inside = negative_log_likelihood(method, GaussianOracle(method, 0.0, 1.0), x).per_point
    torch.testing.assert_close(inside, expected)


def test_a_flow_likelihood_agrees_with_metas_ode_solver():
    from flow_matching.solver import ODESolver

    method, mu, s = FlowMatching(), 0.7, 0.4
    oracle = GaussianOracle(method, mu, s)
    x = points(8, 2, mu, s)

    class Velocity(torch.nn.Module):
        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return oracle(x, (t * method.num_timesteps).expand(x.shape[0]))

    _, log_p = ODESolver(Velocity()).compute_likelihood(
        x, lambda x0: log_density(x0, 0.0, 1.0), step_size=None, method="dopri5", atol=1e-9, rtol=1e-9,
        time_grid=torch.tensor([1.0, 0.0], dtype=torch.float64), exact_divergence=True)
    ours = negative_log_likelihood(method, oracle, x, **TIGHT)
    torch.testing.assert_close(ours.per_point, -log_p, atol=1e-6, rtol=0)

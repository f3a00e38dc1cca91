"""ECT's schedule and loss: the mapping function's gap Delta t = t - r shrinks q-fold each stage, r = 0 (the data
as target) at the start, where the loss is the EDM-weighted distance of D to the data; the consistency target
is the stop-gradient network at r with the same noise; 1 and 2 steps sample through sigma_mid."""

from __future__ import annotations

import itertools

import pytest
import torch

from diffusion.methods import ConsistencyTuning
from diffusion.models import MLP
from diffusion.runtime.checks import ConfigError
from diffusion.sampling.sampler import Sampler


def test_the_gap_shrinks_q_fold_each_stage_and_starts_as_the_diffusion_loss():
    method, step = ConsistencyTuning(total_steps=400, stages=4, q=4.0, k=8.0, b=1.0), [0]
    method.follow_steps(lambda: step[0])
    sigma = torch.tensor([0.01, 0.5, 2.0, 80.0], dtype=torch.float64)
    n = 1 + 8.0 * torch.sigmoid(-sigma)
    gaps = []
    for stage in range(4):
        step[0] = 100 * stage + 50
        assert method.stage() == stage
        r = method.shrunk_sigmas(sigma)
        torch.testing.assert_close(r, (sigma * (1 - n / 4.0 ** (stage + 1))).clamp(min=0))
        gaps.append(sigma - r)
    assert method.shrunk_sigmas(sigma)[0] > 0 and gaps[0][0] == sigma[0]  # stage 0: r = 0 at small t
    assert all((later <= earlier).all() for earlier, later in itertools.pairwise(gaps))
    step[0] = 10_000
    assert method.stage() == 3  # the last stage holds after total_steps


def test_at_r_zero_the_loss_is_the_weighted_distance_of_d_to_the_data():
    torch.manual_seed(0)
    network, method = MLP(dim=2, hidden_dim=16, num_layers=1, time_embed_dim=8), ConsistencyTuning(k=1e6)
    x0, noise, t = torch.randn(8, 2), torch.randn(8, 2), torch.arange(8) * 100
    sigma = method.training_sigmas(t, 8, x0.device)
    assert (method.shrunk_sigmas(sigma) == 0).all()  # n(t) huge: every r clamps to 0
    denoised = method.precondition(network, x0 + sigma[:, None].float() * noise, sigma)
    expected = (method.loss_weights(sigma).float() * (denoised - x0).pow(2).sum(1).sqrt()).mean()
    torch.testing.assert_close(method.compute_loss(network, x0, t=t, noise=noise), expected)


def test_the_gap_weighting_divides_each_distance_by_t_minus_r():
    torch.manual_seed(0)
    network = MLP(dim=2, hidden_dim=16, num_layers=1, time_embed_dim=8)
    method = ConsistencyTuning(weighting="gap", total_steps=100)
    x0, noise, t = torch.randn(8, 2), torch.randn(8, 2), torch.arange(8) * 100 + 50
    sigma = method.training_sigmas(t, 8, x0.device)
    r = method.shrunk_sigmas(sigma)
    assert ((r > 0) & (r < sigma)).any() and (r < sigma).all()
    denoised = method.precondition(network, x0 + sigma[:, None].float() * noise, sigma)
    target = method.target(network, x0, noise, r, {})
    expected = ((denoised - target).pow(2).sum(1).sqrt() / (sigma - r).float()).mean()
    torch.testing.assert_close(method.compute_loss(network, x0, t=t, noise=noise), expected)
    with pytest.raises(ConfigError, match=r"tune.weighting must be one of \['edm', 'gap'\], got 'snr'"):
        ConsistencyTuning(weighting="snr")


def test_the_target_is_the_network_at_r_with_the_same_noise():
    torch.manual_seed(0)
    network, method = MLP(dim=2, hidden_dim=16, num_layers=1, time_embed_dim=8), ConsistencyTuning()
    x0, noise = torch.randn(4, 2), torch.randn(4, 2)
    r = torch.tensor([0.0, 0.3, 1.0, 5.0], dtype=torch.float64)
    target = method.target(network, x0, noise, r, {})
    torch.testing.assert_close(target[0], x0[0])
    torch.testing.assert_close(target[1:], method.precondition(network, x0[1:] + r[1:, None].float() * noise[1:], r[1:]))


def test_one_and_two_steps_and_a_third_is_refused():
    network, method = MLP(dim=2, hidden_dim=8, num_layers=1, time_embed_dim=8), ConsistencyTuning(sigma_mid=0.821)
    assert Sampler(network, method, (2,), steps=2, device="cpu").grid().sigmas == [80.0, 0.821, 0.0]
    result = Sampler(network, method, (2,), num_samples=5, device="cpu").sample()
    assert result.nfe == 1 and result.samples.shape == (5, 2)
    with pytest.raises(ConfigError, match=r"sampler.steps must be in \[1, 2\], got 3"):
        Sampler(network, method, (2,), steps=3, device="cpu")
    with pytest.raises(ConfigError, match="tune.sigma_mid"):
        ConsistencyTuning(sigma_mid=100.0)

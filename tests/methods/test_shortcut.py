"""Shortcut models on closed forms: with the exact average velocity of Gaussian data, two half steps are one full
step (the self-consistency target is exact), sampling in 1, 2 and 4 steps gives the data's law, the training
times lie on the grid of their step size; bad step counts and settings name their key."""

from __future__ import annotations

import pytest
import torch
from average_velocity import MU, STD, ExactAverage, T

from diffusion.methods import Shortcut
from diffusion.models import MLP
from diffusion.runtime.checks import ConfigError
from diffusion.sampling.sampler import SampleNoise, Sampler


@pytest.mark.parametrize("full", [1.0, 0.5, 0.125])
def test_two_exact_half_steps_are_one_exact_full_step(full):
    method, network = Shortcut(num_timesteps=T), ExactAverage()
    x = torch.randn(32, 3, dtype=torch.float64)
    times = torch.floor(torch.rand(32, dtype=torch.float64) / full) * full
    steps = torch.full((32,), full, dtype=torch.float64)
    jump = method.two_half_steps(network, x, times, steps, {})
    torch.testing.assert_close(jump, network(x, times * T, steps * T), atol=1e-9, rtol=1e-9)


def test_the_finest_full_step_takes_two_flow_steps():
    method, network = Shortcut(max_steps=4, num_timesteps=T), ExactAverage()
    x, times = torch.randn(8, 2, dtype=torch.float64), torch.full((8,), 0.5, dtype=torch.float64)
    jump = method.two_half_steps(network, x, times, torch.full((8,), 0.25, dtype=torch.float64), {})
    first = network(x, times * T)  # d = 0: the velocity
    second = network(x + 0.125 * first, (times + 0.125) * T)
    torch.testing.assert_close(jump, (first + second) / 2)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_shortcut_sampling_with_the_exact_network_gives_the_data_law(steps):
    sampler = Sampler(ExactAverage(), Shortcut(num_timesteps=T), (2,), num_samples=4000, steps=steps, device="cpu")
    result = sampler.sample()
    assert result.nfe == steps and sampler.name == "shortcut"
    assert abs(result.samples.mean().item() - MU) < 0.03 and abs(result.samples.std().item() - STD) < 0.03


def test_consistency_times_lie_on_the_grid_of_their_power_of_two_step():
    torch.manual_seed(0)
    times, full = Shortcut(max_steps=8).consistency_times(4000, None, torch.device("cpu"))
    assert set(full.tolist()) == {1.0, 0.5, 0.25, 0.125}
    assert torch.equal(times / full, torch.floor(times / full)) and (times + full <= 1).all() and (times >= 0).all()


def test_the_flow_rows_regress_the_velocity_and_the_loss_is_finite_for_a_real_network():
    torch.manual_seed(0)
    network = MLP(dim=2, hidden_dim=16, num_layers=1, time_embed_dim=8, two_times=True)
    x0 = torch.randn(8, 2)
    flow_only = Shortcut(consistency_share=0.0, num_timesteps=50)
    t, noise = torch.arange(8), torch.randn(8, 2)
    times = flow_only.training_times(t, 8, x0.device)
    velocity_error = network(flow_only.q_sample(x0, times, noise), times.float() * 50, interval=torch.zeros(8)) - (
        x0 - noise)
    torch.testing.assert_close(flow_only.compute_loss(network, x0, t=t, noise=noise), velocity_error.pow(2).mean())
    assert torch.isfinite(Shortcut(num_timesteps=50).compute_loss(network, x0))


@pytest.mark.parametrize("steps", [3, 256])
def test_a_step_count_the_model_was_not_trained_for_names_sampler_steps(steps):
    with pytest.raises(ConfigError, match=f"sampler.steps={steps}"):
        Sampler(ExactAverage(), Shortcut(max_steps=128), (2,), steps=steps, device="cpu")


@pytest.mark.parametrize("override, key", [({"max_steps": 6}, "method.max_steps"),
                                           ({"consistency_share": -0.1}, "method.consistency_share"),
                                           ({"default_solver": "meanflow"}, "sampler.solver=meanflow")])
def test_bad_shortcut_settings_name_their_key(override, key):
    with pytest.raises(ConfigError, match=key):
        Shortcut(**override)


def test_sampler_guidance_passes_the_step_size_to_both_halves_of_the_guided_batch():
    torch.manual_seed(0)
    network = MLP(dim=2, hidden_dim=16, num_layers=1, time_embed_dim=8, num_classes=3, two_times=True).eval()
    torch.nn.init.normal_(network.fc_out.weight)
    sampler = Sampler(network, Shortcut(num_timesteps=T), (2,), num_samples=4, steps=1, guidance_scale=2.0,
                      class_labels=[1], device="cpu")
    x0 = SampleNoise(sampler.seed, range(4), (2,), torch.device("cpu"))()  # the first draw: the start
    t, d = torch.zeros(4), torch.full((4,), float(T))  # t = 0, d = 1
    with torch.no_grad():
        cond = network(x0, t, torch.ones(4, dtype=torch.long), interval=d)
        uncond = network(x0, t, torch.full((4,), 3), interval=d)
    torch.testing.assert_close(sampler.sample().samples, x0 + uncond + 2.0 * (cond - uncond))

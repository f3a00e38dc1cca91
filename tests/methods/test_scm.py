"""sCM's math on closed forms. For Gaussian data y ~ N(MU, S^2) TrigFlow's PF-ODE and its consistency function are
known: the sCD teacher conversion of an exact EDM or flow teacher gives the exact TrigFlow velocity; with the exact
consistency function the tangent g (JVP included) vanishes; one step from the exact F gives the data's law. The JVP
agrees with finite differences on a real network; 1- and 2-step sampling are seeded per sample; a non-finite
tangent stops the Trainer at its step; the adaptive weight is trained with the network."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from diffusion.data import MoonsData
from diffusion.loggers import NullLogger
from diffusion.methods import EDM, SCM, FlowMatching
from diffusion.methods.scm import AdaptiveWeight, TrigFlowTeacher
from diffusion.models import MLP
from diffusion.runtime.checks import ConfigError
from diffusion.sampling.sampler import Sampler
from diffusion.storage.file_manager import FileManager
from diffusion.training.trainer import Trainer, TrainingDiverged

MU, S, SIGMA_D, T = 0.3, 0.6, 0.5, 1000


def trigflow_velocity(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """E[dx_t / dt | x_t] = -sin(t) E[x_0 | x_t] + cos(t) E[z | x_t] for x_0 ~ N(MU, S^2), z ~ N(0, SIGMA_D^2)."""
    cos, sin = t.cos()[:, None], t.sin()[:, None]
    variance = cos**2 * S**2 + sin**2 * SIGMA_D**2
    centred = x_t - cos * MU
    return -sin * (MU + cos * S**2 / variance * centred) + cos * (sin * SIGMA_D**2 / variance * centred)


class ExactEDM(nn.Module):
    """EDM's F(c_in x; c_noise) whose D(x; sigma) = MU + S^2 / (S^2 + sigma^2) (x - MU), the exact denoiser."""

    def forward(self, x_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        sigma = (4 * c_noise.double()).exp()[:, None]
        norm = (sigma**2 + SIGMA_D**2).sqrt()
        x = x_in.double() * norm
        denoised = MU + S**2 / (S**2 + sigma**2) * (x - MU)
        return ((denoised - SIGMA_D**2 / norm**2 * x) / (sigma * SIGMA_D / norm)).to(x_in.dtype)


class ExactFlow(nn.Module):
    """The linear path's exact velocity E[y - n | x_s] at x_s = s y + (1 - s) n, the network time being T s."""

    def forward(self, x_s: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        s = (time.double() / T)[:, None]
        variance = s**2 * S**2 + (1 - s) ** 2
        return (MU + (s * S**2 - (1 - s)) / variance * (x_s.double() - s * MU)).to(x_s.dtype)


class ExactTrigFlow(nn.Module):
    """F of the exact consistency function f(x_t, t) = MU + S (x_t - cos(t) MU) / sqrt(S^2 cos^2 + sigma_d^2 sin^2)
    (Gaussian marginals: the ODE keeps the standardised x_t), differentiable in t for the JVP."""

    def forward(self, x_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        t = c_noise.double()[:, None]  # c_noise(t) = t
        x_t = x_in.double() * SIGMA_D
        f = MU + S * (x_t - t.cos() * MU) / (S**2 * t.cos() ** 2 + SIGMA_D**2 * t.sin() ** 2).sqrt()
        return ((t.cos() * x_t - f) / (t.sin() * SIGMA_D)).to(x_in.dtype)


def draws(count: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    t = torch.rand(count, dtype=torch.float64) * 1.5 + 0.03  # (0, pi / 2)
    return torch.randn(count, 3, dtype=torch.float64), t


@pytest.mark.parametrize("teacher", ["edm", "flow"])
def test_the_scd_teacher_conversion_is_exact_on_gaussian_data(teacher):
    network, method = (ExactEDM(), EDM(sigma_data=SIGMA_D)) if teacher == "edm" else (ExactFlow(), FlowMatching())
    x_t, t = draws()
    velocity = TrigFlowTeacher(network, method, SIGMA_D).velocity(x_t, t, {})
    tolerance = 1e-9 if teacher == "edm" else 1e-6  # a flow's network time T s is float32
    torch.testing.assert_close(velocity, trigflow_velocity(x_t, t), atol=tolerance, rtol=tolerance)


def test_the_exact_consistency_function_has_a_zero_tangent_through_the_jvp():
    method = SCM(sigma_data=SIGMA_D, num_timesteps=T, tangent_warmup_steps=0)
    x_t, t = draws()
    network, velocity = ExactTrigFlow(), trigflow_velocity(x_t, t)
    output = network(x_t / SIGMA_D, method.network_time(t))
    tangent = method.tangent(network, x_t, t, velocity, output.float(), {})
    assert tangent.abs().max() < 1e-4  # g = cos(t) df/dt = 0 along the ODE; a wrong sign or factor is O(1)
    sampler = Sampler(network, SCM(sigma_data=SIGMA_D, num_timesteps=T, clip_denoised=False), (1,),
                      num_samples=4000, steps=1, device="cpu")
    samples = sampler.sample().samples.double()
    assert abs(samples.mean().item() - MU) < 0.03 and abs(samples.std().item() - S) < 0.03


def test_the_jvp_matches_central_finite_differences():
    torch.manual_seed(0)
    network = MLP(dim=3, hidden_dim=32, num_layers=2, time_embed_dim=16)
    method = SCM()  # c_noise = t: smooth enough for float32 differences
    x_t, velocity = torch.randn(5, 3), torch.randn(5, 3)
    t = torch.tensor([0.1, 0.4, 0.8, 1.2, 1.5], dtype=torch.float64)
    derivative = method.time_derivative(network, x_t, t, velocity, {})
    weight = (t.cos() * t.sin()).float()

    def trigflow(eps: float) -> torch.Tensor:
        shifted = t.float() + eps * weight
        return network((x_t + eps * weight[:, None] * velocity) / method.sigma_data,
                       method.network_time(shifted)).double()

    eps = 1e-2
    assert derivative.abs().max() > 0.01
    torch.testing.assert_close(derivative.double(), (trigflow(eps) - trigflow(-eps)) / (2 * eps), atol=2e-3, rtol=2e-3)


def test_one_and_two_step_sampling_is_seeded_per_sample():
    torch.manual_seed(0)
    network = MLP(dim=2, hidden_dim=16, num_layers=1, time_embed_dim=8)
    method = SCM(clip_denoised=False)

    def sample(steps: int, batch_size: int, seed: int = 3) -> torch.Tensor:
        sampler = Sampler(network, method, (2,), num_samples=6, batch_size=batch_size, steps=steps, seed=seed,
                          device="cpu")
        result = sampler.sample()
        assert result.samples.shape == (6, 2) and result.nfe == steps and sampler.name == "scm"
        return result.samples

    one, two = sample(1, 6), sample(2, 6)
    assert torch.equal(sample(1, 6), one) and torch.equal(sample(2, 6), two)  # deterministic
    # The batch split changes only the float rounding of the network's matmuls, not the noise of a sample.
    torch.testing.assert_close(sample(1, 4), one, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sample(2, 4), two, rtol=1e-5, atol=1e-6)
    assert not torch.equal(one, two) and not torch.equal(sample(1, 6, seed=4), one)
    assert Sampler(network, method, (2,), steps=2, device="cpu").grid().sigmas[1] == pytest.approx(0.5 * math.tan(1.1))


def test_a_step_count_it_cannot_do_and_bad_settings_name_their_key():
    network = MLP(dim=2, hidden_dim=8, num_layers=1, time_embed_dim=8)
    with pytest.raises(ConfigError, match=r"sampler.steps must be in \[1, 2\], got 3"):
        Sampler(network, SCM(), (2,), steps=3, device="cpu")
    with pytest.raises(ConfigError, match="sampler.solver=heun"):
        Sampler(network, SCM(), (2,), solver="heun", device="cpu")
    for override, key in (({"t_mid": 2.0}, "method.t_mid"), ({"tangent_norm_c": 0.0}, "method.tangent_norm_c"),
                          ({"tangent_warmup_steps": -1}, "method.tangent_warmup_steps")):
        with pytest.raises(ConfigError, match=key):
            SCM(**override)


def test_the_warm_up_follows_the_optimizer_step():
    method, step = SCM(tangent_warmup_steps=10), [0]
    method.follow_steps(lambda: step[0])
    assert method.warmup() == 0.0
    step[0] = 5
    assert method.warmup() == 0.5
    step[0] = 50
    assert method.warmup() == 1.0 and SCM(tangent_warmup_steps=0).warmup() == 1.0


def test_the_adaptive_weight_joins_the_network_and_is_trained():
    torch.manual_seed(0)
    network = MLP(dim=2, hidden_dim=8, num_layers=1, time_embed_dim=8)
    method = SCM(clip_denoised=False)
    method.check_network(network)
    method.check_network(network)  # once
    assert isinstance(network.trigflow_weight, AdaptiveWeight)
    assert sum(name.startswith("trigflow_weight.") for name in network.state_dict()) == 2
    method.compute_loss(network, torch.randn(16, 2)).backward()
    assert network.trigflow_weight.linear.weight.grad.abs().sum() > 0


class InfiniteTangent(MLP):
    """An MLP whose output is finite but whose time derivative is not: + 0 * sqrt(t - t), whose derivative at 0 is
    infinite (and 0 * inf = nan in the tangent)."""

    def forward(self, x, t, y=None, interval=None):
        kink = torch.sqrt(torch.relu(t.float() - t.float().detach()))[:, None]
        return super().forward(x, t, y, interval) + 0 * kink


def test_a_non_finite_tangent_stops_the_trainer_naming_the_step(tmp_path):
    torch.manual_seed(0)
    model, method = InfiniteTangent(hidden_dim=16, num_layers=1, time_embed_dim=8), SCM(clip_denoised=False)
    method.check_network(model)
    trainer = Trainer(model, method, MoonsData(num_samples=200), FileManager(tmp_path), NullLogger(), epochs=1,
                      lr=1e-3, batch_size=32, device="cpu", progress=False)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 1 \(epoch 1\)"):
        trainer.train()
    assert all(math.isfinite(float(p.detach().abs().sum())) for p in model.parameters()), "no update with a NaN loss"

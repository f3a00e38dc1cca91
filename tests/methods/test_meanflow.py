"""MeanFlow's math on closed forms: for Gaussian data the linear path's flow map is affine, so the exact average
velocity u*(x, a, b) is known; it satisfies the MeanFlow identity with the method's JVP, is the velocity at a = b,
and its one-step sampling gives the data's law. The JVP agrees with finite differences on a real network, the
classifier-free guidance folded into training mixes the unconditional field, and a non-finite tangent stops the
Trainer at the step it happened."""

from __future__ import annotations

import math

import pytest
import torch
from average_velocity import MU, STD, ExactAverage, T
from torch import nn

from diffusion.data import MoonsData
from diffusion.loggers import NullLogger
from diffusion.methods import MeanFlow
from diffusion.methods.meanflow import bare_network
from diffusion.models import MLP
from diffusion.runtime.checks import ConfigError
from diffusion.sampling.sampler import Sampler
from diffusion.storage.file_manager import FileManager
from diffusion.training.trainer import Trainer, TrainingDiverged


def test_the_exact_average_velocity_satisfies_the_meanflow_identity_through_the_methods_jvp():
    method, network = MeanFlow(num_timesteps=T), ExactAverage()
    x = torch.randn(64, 3, dtype=torch.float64)
    start = torch.rand(64, dtype=torch.float64) * 0.8
    end = start + (1 - start) * torch.rand(64, dtype=torch.float64)
    times, interval = start * T, (end - start) * T
    u = network(x, times, interval)
    v = network(x, times)  # u(x, a, a) = v(x, a)
    du_da = method.total_derivative(network, x, start, end, v, {})
    torch.testing.assert_close(v + (end - start)[:, None] * du_da, u, atol=1e-6, rtol=1e-6)


def test_u_at_r_equal_t_is_the_velocity_and_the_average_is_its_mean_along_the_path():
    network, x = ExactAverage(), torch.randn(8, 2, dtype=torch.float64)
    a, b = 0.2, 0.9
    grid = torch.linspace(a, b, 2001, dtype=torch.float64)
    path, velocities = [x], []
    for s, s_next in zip(grid[:-1], grid[1:]):  # midpoint steps along the exact velocity field
        v = network(path[-1], torch.full((8,), float(s) * T, dtype=torch.float64))
        x_mid = path[-1] + (s_next - s) / 2 * v
        velocities.append(network(x_mid, torch.full((8,), float(s + s_next) / 2 * T, dtype=torch.float64)))
        path.append(path[-1] + (s_next - s) * velocities[-1])
    mean_velocity = torch.stack(velocities).mean(0)
    exact = network(x, torch.full((8,), a * T, dtype=torch.float64), torch.full((8,), (b - a) * T, dtype=torch.float64))
    torch.testing.assert_close(mean_velocity, exact, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("steps", [1, 2])
def test_meanflow_sampling_with_the_exact_average_velocity_gives_the_data_law(steps):
    sampler = Sampler(ExactAverage(), MeanFlow(num_timesteps=T), (2,), num_samples=4000, steps=steps, device="cpu")
    result = sampler.sample()
    assert result.nfe == steps and sampler.name == "meanflow"
    assert abs(result.samples.mean().item() - MU) < 0.03 and abs(result.samples.std().item() - STD) < 0.03


def test_the_jvp_matches_central_finite_differences_on_a_two_time_network():
    # num_timesteps=1: the network sees the times themselves, smooth enough for float32 differences (the networks
    # embed times in float32).
    torch.manual_seed(0)
    network = MLP(dim=3, hidden_dim=32, num_layers=2, time_embed_dim=16, two_times=True)
    method = MeanFlow(num_timesteps=1)
    x, v = torch.randn(5, 3), torch.randn(5, 3)
    start = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.2], dtype=torch.float64)
    end = torch.tensor([0.9, 0.3, 0.8, 1.0, 0.6], dtype=torch.float64)
    tangent = method.total_derivative(network, x, start, end, v, {})

    def u(eps: float) -> torch.Tensor:
        a = start + eps
        return network(x + eps * v, a.float(), interval=(end - a).float()).double()

    eps = 1e-2
    moving = end > start
    assert tangent.abs().max() > 0.01
    torch.testing.assert_close(tangent.double()[moving], ((u(eps) - u(-eps)) / (2 * eps))[moving], atol=2e-3,
                               rtol=2e-3)
    # The r = t row is never differentiated: the target multiplies its derivative by t - r = 0.
    assert torch.equal(tangent[~moving], torch.zeros_like(tangent[~moving]))


def test_the_loss_with_the_jvp_on_the_r_below_t_rows_only_equals_the_whole_batch_jvp_loss():
    torch.manual_seed(0)
    network = MLP(dim=3, hidden_dim=32, num_layers=2, time_embed_dim=16, two_times=True)
    method = MeanFlow(r_equals_t_share=0.5, time_sampling="uniform", norm_p=0.0)
    x0 = torch.randn(64, 3)
    torch.manual_seed(1)
    loss = method.compute_loss(network, x0)
    torch.manual_seed(1)  # the same draws: times, noise
    start, end = method.interval_times(None, 64, x0.device)
    noise = torch.randn_like(x0)
    x_t, scale = method.q_sample(x0, start, noise), float(method.num_timesteps)
    assert 0 < int((end > start).sum()) < 64

    def u(x, a):
        return network(x, a * scale, interval=(end.float() - a) * scale)

    with torch.no_grad():
        derivative = torch.func.jvp(u, (x_t, start.float()), (x0 - noise, torch.ones(64)))[1]
    target = (x0 - noise) + (end - start).float()[:, None] * derivative
    expected = (u(x_t, start.float()) - target).pow(2).sum(dim=1).mean()
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)


class ConstantField(nn.Module):
    """Outputs ``label + 1`` everywhere (the null label 3 gives 4): the unconditional field is 4."""

    num_classes = 3

    def forward(self, x, t, y=None, interval=None):
        return torch.zeros_like(x) + (y.to(x.dtype)[:, None] + 1)


def test_guidance_folded_into_training_mixes_the_unconditional_field_on_labelled_samples():
    method = MeanFlow(num_timesteps=T, guidance_scale=2.0)
    x, v = torch.zeros(3, 2), torch.ones(3, 2)
    y = torch.tensor([0, 2, 3])  # the last one dropped to the null label
    guided = method.guided_velocity(ConstantField(), x, torch.full((3,), 0.5), v, {"y": y}, {"y": y})
    torch.testing.assert_close(guided, torch.tensor([[-2.0, -2.0], [-2.0, -2.0], [1.0, 1.0]]))  # 2 v - 1 * 4


@pytest.mark.parametrize("override, key", [
    ({"r_equals_t_share": 1.5}, "method.r_equals_t_share"), ({"norm_p": -1.0}, "method.norm_p"),
    ({"guidance_scale": 2.0, "cond_drop_prob": 0.0}, "method.cond_drop_prob"),
    ({"default_solver": "euler"}, "sampler.solver=euler"),
])
def test_bad_meanflow_settings_name_their_key(override, key):
    with pytest.raises(ConfigError, match=key):
        MeanFlow(**override)


def test_a_one_time_network_is_refused_naming_model_two_times():
    with pytest.raises(ConfigError, match="model.two_times=true"):
        MeanFlow().check_network(MLP(dim=2, hidden_dim=8, num_layers=1, time_embed_dim=8))


class InfiniteTangent(MLP):
    """A two-time MLP whose output is finite but whose time derivative is not: + 0 * sqrt(t - t), whose derivative
    at 0 is infinite (and 0 * inf = nan in the tangent)."""

    def forward(self, x, t, y=None, interval=None):
        kink = torch.sqrt(torch.relu(t.float() - t.float().detach()))[:, None]  # 0, with d/dt = inf
        return super().forward(x, t, y, interval) + 0 * kink


def test_a_non_finite_tangent_stops_the_trainer_naming_the_step(tmp_path):
    torch.manual_seed(0)
    model = InfiniteTangent(hidden_dim=16, num_layers=1, time_embed_dim=8, two_times=True)
    trainer = Trainer(model, MeanFlow(num_timesteps=50, clip_denoised=False), MoonsData(num_samples=200),
                      FileManager(tmp_path), NullLogger(), epochs=1, lr=1e-3, batch_size=32, device="cpu",
                      progress=False)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 1 \(epoch 1\)"):
        trainer.train()
    assert all(math.isfinite(float(p.detach().abs().sum())) for p in model.parameters()), "no update with a NaN loss"


def test_targets_run_on_the_network_inside_the_trainers_compile_and_ddp_wrappers():
    network = MLP(dim=2, hidden_dim=8, num_layers=1, time_embed_dim=8, two_times=True)
    ddp_like = nn.Module()
    ddp_like.module = network  # DistributedDataParallel's attribute
    assert bare_network(torch.compile(ddp_like)) is network and bare_network(network) is network


@pytest.mark.parametrize("method", ["meanflow", "scm"])
def test_the_jvp_targets_run_under_the_trainers_bfloat16_autocast(method):
    # The default run trains in bfloat16: the JVP runs in float32 outside the autocast (forward-mode AD through
    # autocast's weight casts fails on the CPU), so the loss under autocast is finite and its target is the fp32 one.
    from diffusion.methods import SCM
    from diffusion.models import UNet

    torch.manual_seed(0)
    network = UNet(in_channels=1, image_size=8, base_channels=8, channel_mults=(1,), num_res_blocks=1, num_groups=4,
                   two_times=method == "meanflow")
    trained = MeanFlow() if method == "meanflow" else SCM()
    trained.check_network(network)  # sCM: adds its adaptive weight u(t)
    x0 = torch.randn(4, 1, 8, 8)
    torch.manual_seed(1)
    reference = trained.compute_loss(network, x0)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = trained.compute_loss(network, x0)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(reference.item(), rel=0.1)

"""The DDPM paper's CIFAR-10 U-Net: its size, its skip wiring, a training step, and class conditioning."""

from __future__ import annotations

import pytest
import torch

from diffusion.methods import GaussianDiffusion
from diffusion.models import DDPMUNet
from diffusion.methods.schedules import linear_betas
from diffusion.runtime.checks import ConfigError


@pytest.fixture(scope="module")
def cifar_net() -> DDPMUNet:
    torch.manual_seed(0)
    return DDPMUNet(in_channels=3, image_size=32)  # the defaults are App. B's CIFAR-10 settings


def test_parameter_count_matches_the_paper(cifar_net):
    count = sum(p.numel() for p in cifar_net.parameters())
    assert abs(count - 35.7e6) / 35.7e6 < 0.01, count
    # num_res_blocks + 1 = 3 up blocks per level, with attention only at 16x16 (plus the middle).
    assert [len(blocks) for blocks in cifar_net.up] == [3, 3, 3, 3]
    assert sum(stage.attn is not None for blocks in cifar_net.up for stage in blocks) == 3
    assert sum(stage.attn is not None for blocks in cifar_net.down for stage in blocks) == 2


def test_one_training_step_on_cpu(cifar_net):
    torch.manual_seed(0)
    method = GaussianDiffusion(schedule=lambda n: linear_betas(n, 1e-4, 0.02), num_timesteps=1000, default_solver="ddpm")
    optimizer = torch.optim.Adam(cifar_net.parameters(), lr=2e-4)
    x0 = torch.rand(2, 3, 32, 32) * 2 - 1
    before = cifar_net.conv_out.weight.detach().clone()
    loss = method.compute_loss(cifar_net.train(), x0)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(cifar_net.parameters(), 1.0)
    optimizer.step()
    assert torch.isfinite(loss) and 0.5 < loss.item() < 1.5  # zero output: the loss starts at E[eps^2] = 1
    assert not torch.equal(before, cifar_net.conv_out.weight)


def test_class_conditioning_with_a_null_label():
    torch.manual_seed(0)
    net = DDPMUNet(1, 8, base_channels=32, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(4,),
                   num_groups=8, num_classes=3).eval()
    for param in net.parameters():  # zero-initialised output convs would hide the embedding from the output
        if not param.any():
            torch.nn.init.normal_(param, std=0.1)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 900])
    assert net(x, t).shape == (2, 1, 8, 8)
    assert torch.allclose(net(x, t), net(x, t, torch.full((2,), net.num_classes)))  # y=None is the null label
    assert not torch.allclose(net(x, t, torch.tensor([0, 1])), net(x, t, torch.tensor([2, 2])))
    with pytest.raises(ValueError, match="num_classes=0"):
        DDPMUNet(1, 8, base_channels=32, channel_mults=(1, 2), num_groups=8, attention_resolutions=())(
            x, t, torch.tensor([0, 1]))


def test_bad_arguments_name_their_key():
    with pytest.raises(ConfigError, match="model.attention_resolutions"):
        DDPMUNet(3, 32, attention_resolutions=(12,))
    with pytest.raises(ConfigError, match="data.image_size"):
        DDPMUNet(3, 30)

"""Attention under CPU bf16 autocast runs in float32 in every backbone (PyTorch's fused CPU kernel is several times
slower in bf16 without AMX: diffusion/models/attention.py), and returns the caller's dtype with gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from attention_calls import AttentionDtypes

from diffusion.models import DDPMUNet, DiT, EDM2UNet, UNet, UViT
from diffusion.models.attention import attention


def qkv(dtype: torch.dtype, shape=(4, 2, 24, 8)) -> list[torch.Tensor]:
    torch.manual_seed(0)
    return [torch.randn(shape).to(dtype).requires_grad_() for _ in range(3)]


def test_float32_is_the_fused_kernel_unchanged():
    q, k, v = qkv(torch.float32)
    assert torch.equal(attention(q, k, v), F.scaled_dot_product_attention(q, k, v))


def test_bf16_on_cpu_is_float32_attention_rounded_once_with_gradients():
    q, k, v = qkv(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16), AttentionDtypes() as seen:
        out = attention(q, k, v)
    assert seen.dtypes == [torch.float32]
    assert out.dtype == torch.bfloat16
    reference = F.scaled_dot_product_attention(*(t.detach().float() for t in (q, k, v)))
    assert torch.equal(out.detach(), reference.to(torch.bfloat16))
    out.float().square().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.bfloat16 and t.grad.abs().sum() > 0 for t in (q, k, v))


BACKBONES = {
    "dit": lambda: DiT(in_channels=1, image_size=8, patch_size=2, depth=1, hidden_size=32, num_heads=4),
    "uvit": lambda: UViT(in_channels=1, image_size=8, patch_size=2, depth=3, hidden_size=32, num_heads=4),
    "unet": lambda: UNet(in_channels=1, image_size=8, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                         attention_resolutions=(4,), num_groups=4),
    "ddpm_unet": lambda: DDPMUNet(1, 8, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                                  attention_resolutions=(4,), num_groups=4),
    "edm2_unet": lambda: EDM2UNet(in_channels=1, image_size=8, model_channels=8, channel_mults=(1, 2), num_blocks=1,
                                  attention_resolutions=(4,), channels_per_head=8),
}


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_attends_in_float32_under_cpu_bf16_autocast(name):
    torch.manual_seed(0)
    net = BACKBONES[name]()
    x, t = torch.randn(2, 1, 8, 8), torch.rand(2)
    with torch.autocast("cpu", dtype=torch.bfloat16), AttentionDtypes() as seen:
        out = net(x, t)
    assert seen.dtypes and set(seen.dtypes) == {torch.float32}
    out.float().square().mean().backward()
    assert torch.isfinite(out.float()).all()
    attention_weights = [p for n, p in net.named_parameters() if "qkv" in n]
    assert attention_weights and all(p.grad is not None for p in attention_weights)

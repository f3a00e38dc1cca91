"""U-ViT (Bao et al. 2023): Table 1's parameter counts (S/2 on CIFAR-10; M, L, H at ImageNet 256's 32x32x4
latents, patch 2, 1,000 classes), long skips, the label token and config errors."""

from __future__ import annotations

import re

import pytest
import torch
from paper_sizes import relative_gap, summary_of

from diffusion.models import UViT
from diffusion.runtime.checks import ConfigError

IMAGENET_LATENT = ["data.shape=[4,32,32]", "data.num_classes=1000"]


@pytest.mark.parametrize("size, data, paper", [
    ("S", ["data.shape=[3,32,32]"], 44e6),
    ("M", IMAGENET_LATENT, 131e6),
    ("L", IMAGENET_LATENT, 287e6),
    ("H", IMAGENET_LATENT, 501e6),
])
def test_parameter_counts_match_table_1(size, data, paper):
    figures = summary_of("task=summary", "data=synthetic", *data, "model=uvit", f"model.size={size}")
    assert relative_gap(figures.params, paper) < 0.01


def tiny(**overrides) -> UViT:
    settings = dict(in_channels=2, image_size=8, patch_size=2, depth=5, hidden_size=32, num_heads=4, num_classes=3)
    return UViT(**{**settings, **overrides})


def test_blocks_mirror_with_long_skips_and_shapes_round_trip():
    torch.manual_seed(0)
    net = tiny()
    assert len(net.in_blocks) == len(net.out_blocks) == 2
    assert all(block.skip_linear is not None for block in net.out_blocks)
    assert all(block.skip_linear is None for block in [*net.in_blocks, net.mid_block])
    x, t = torch.randn(3, 2, 8, 8), torch.tensor([1.0, 5.0, 9.0])
    conditional = net(x, t, torch.tensor([0, 1, 2]))
    assert conditional.shape == x.shape
    assert not torch.allclose(conditional, net(x, t))  # y=None is the null label token
    assert net.pos_embed.shape == (2 + 16, 32)  # time and label tokens before the 16 patches


def test_unconditional_network_has_one_extra_token_and_refuses_labels():
    net = tiny(num_classes=0, conv_out=False)
    assert net.pos_embed.shape == (1 + 16, 32)
    with pytest.raises(ValueError, match="model.num_classes"):
        net(torch.randn(1, 2, 8, 8), torch.zeros(1), torch.zeros(1, dtype=torch.long))


def test_xavier_zero_init_makes_every_block_the_identity_and_sincos_positions_start_learned():
    torch.manual_seed(0)
    net = tiny(init="xavier_zero", position_init="sincos")
    h = torch.randn(3, 2 + 16, 32)
    for block in [*net.in_blocks, net.mid_block]:
        torch.testing.assert_close(block(h), h)
    assert not torch.allclose(tiny().mid_block(h), h)  # the paper's initialisation: not the identity
    assert net.pos_embed.requires_grad and net.pos_embed[:2].abs().sum() == 0  # extras start at zero
    assert net.pos_embed[2:].std() > 0.5 > tiny().pos_embed.std()  # patches start at sin-cos, not std 0.02


@pytest.mark.parametrize("overrides, key", [
    ({"depth": 4}, "model.depth"),
    ({"patch_size": 3}, "model.patch_size"),
    ({"num_heads": 5}, "model.num_heads"),
    ({"size": "XL", "depth": None, "hidden_size": None, "num_heads": None}, "model.size"),
    ({"position_init": "rope"}, "model.position_init"),
    ({"init": "kaiming"}, "model.init"),
])
def test_bad_arguments_name_their_key(overrides, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        tiny(**overrides)

"""DiT (Peebles & Xie 2023): Table 1's parameter counts and DiT-XL/2's forward FLOPs at the paper's
configuration (32x32x4 latents, patch 2, 1,000 classes), adaLN-Zero's identity start, shapes and config errors."""

from __future__ import annotations

import re

import pytest
import torch
from paper_sizes import relative_gap, summary_of
from runs import ok, run_py

from diffusion.models import DiT
from diffusion.runtime.checks import ConfigError

PAPER = ["task=summary", "data=synthetic", "data.shape=[4,32,32]", "data.num_classes=1000", "model=dit",
         "model.patch_size=2"]
PAPER_PARAMS = {"S": 33e6, "B": 130e6, "L": 458e6}  # Table 1 (XL: end to end below)
PAPER_XL_GFLOPS = 118.6  # Table 1, DiT-XL/2: a multiply-add counted as one operation


@pytest.mark.parametrize("size", sorted(PAPER_PARAMS))
def test_parameter_counts_match_table_1(size):
    assert relative_gap(summary_of(*PAPER, f"model.size={size}").params, PAPER_PARAMS[size]) < 0.01


def test_dit_xl_2_summary_end_to_end_matches_params_and_flops(tmp_path):
    """The paper's 118.6 GFLOPs count a multiply-add as one operation: torch's counter (two per multiply-add)
    gives 237.2, half of it 118.6."""
    out = ok(run_py(tmp_path, *PAPER, "model.size=XL", f"hydra.run.dir={tmp_path / 'run'}")).stdout
    figures = dict(re.findall(r"^(params|gflops|gmacs)=(\S+)$", out, flags=re.M))
    assert relative_gap(int(figures["params"]), 675e6) < 0.01
    assert relative_gap(float(figures["gmacs"]), PAPER_XL_GFLOPS) < 0.05
    assert relative_gap(float(figures["gflops"]) / 2, PAPER_XL_GFLOPS) < 0.05


def tiny(**overrides) -> DiT:
    settings = dict(in_channels=2, image_size=8, patch_size=2, depth=2, hidden_size=32, num_heads=4, num_classes=3)
    return DiT(**{**settings, **overrides})


def test_adaln_zero_makes_every_block_the_identity_at_initialisation():
    torch.manual_seed(0)
    net = tiny()
    tokens, c = torch.randn(3, 16, 32), torch.randn(3, 32)
    for block in net.blocks:
        assert torch.equal(block(tokens, c), tokens)
    x = torch.randn(3, 2, 8, 8)
    assert torch.equal(net(x, torch.tensor([1.0, 5.0, 9.0]), torch.tensor([0, 1, 3])), torch.zeros_like(x))


@pytest.mark.parametrize("patch_size, position_embedding", [(2, "sincos"), (4, "learned"), (8, "sincos")])
def test_patchify_and_unpatchify_round_trip_the_image_shape(patch_size, position_embedding):
    torch.manual_seed(0)
    net = tiny(patch_size=patch_size, position_embedding=position_embedding)
    for parameter in net.parameters():  # move away from the zero start so the output depends on every token
        torch.nn.init.normal_(parameter, std=0.05)
    x = torch.randn(2, 2, 8, 8)
    out = net(x, torch.tensor([3.0, 7.0]))  # y=None: the null label
    assert out.shape == x.shape
    # A change in one patch reaches every pixel (attention mixes the tokens).
    changed = x.clone()
    changed[:, :, :patch_size, :patch_size] += 1.0
    assert (net(changed, torch.tensor([3.0, 7.0])) - out).abs().flatten(2).amax(-1).min() > 0


def test_a_width_not_divisible_by_four_gets_a_full_width_sincos_table():
    net = tiny(hidden_size=30, num_heads=3)  # 7 row and 7 column frequencies: 28 columns, 2 zero ones
    assert net.pos_embed.shape == (16, 30) and net.pos_embed[:, 28:].abs().sum() == 0
    assert net(torch.randn(1, 2, 8, 8), torch.tensor([3.0])).shape == (1, 2, 8, 8)


@pytest.mark.parametrize("overrides, key", [
    ({"patch_size": 3}, "model.patch_size"),
    ({"hidden_size": 30}, "model.num_heads"),
    ({"size": "XXL", "depth": None, "hidden_size": None, "num_heads": None}, "model.size"),
    ({"position_embedding": "rope"}, "model.position_embedding"),
])
def test_bad_arguments_name_their_key(overrides, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        tiny(**overrides)

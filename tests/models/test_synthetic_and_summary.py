"""data=synthetic (random tensors of data.shape, with data.num_classes labels) and task=summary (the composed
network's parameters and forward FLOPs, built on the meta device)."""

from __future__ import annotations

import re

import pytest
import torch
from paper_sizes import compose_config, summary_of
from runs import main_in_process

from diffusion.app.build import build
from diffusion.data import SyntheticData
from diffusion.runtime.checks import ConfigError


def test_synthetic_data_has_its_shape_range_labels_and_seed():
    data = SyntheticData(shape=[4, 16, 16], num_classes=7, num_samples=50)
    splits = data.load()
    assert data.kind == "image" and data.sample_shape == (4, 16, 16) and data.num_classes == 7
    assert splits.train.shape == (45, 4, 16, 16) and splits.val.shape == (5, 4, 16, 16)
    assert splits.train.min() >= -1 and splits.train.max() <= 1
    assert splits.train_labels.min() >= 0 and splits.train_labels.max() < 7
    assert torch.equal(SyntheticData(shape=[4, 16, 16], num_classes=7, num_samples=50).load().train, splits.train)
    points = SyntheticData(shape=[3], num_samples=20)
    assert points.kind == "points" and points.load().train_labels is None


@pytest.mark.parametrize("shape", [[3, 8], [3, 8, 4], "abc", [0, 8, 8]])
def test_bad_synthetic_shape_names_data_shape(shape):
    with pytest.raises(ConfigError, match=re.escape("data.shape")):
        SyntheticData(shape=shape)


def test_summary_counts_the_network_the_run_would_train():
    overrides = ["data=synthetic", "data.shape=[3,16,16]", "model.base_channels=16"]
    built = build(compose_config(*overrides)).model
    figures = summary_of(*overrides)
    assert figures.params == sum(p.numel() for p in built.parameters())
    assert figures.gflops > 0 and figures.gmacs == pytest.approx(figures.gflops / 2)


def test_summary_task_prints_its_lines_and_trains_nothing(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    code = main_in_process(monkeypatch, "task=summary", "model=dit", "model.depth=1", "data=synthetic",
                           f"hydra.run.dir={run_dir}")
    out = capsys.readouterr().out
    assert code == 0
    assert re.search(r"^params=\d+$", out, re.M) and re.search(r"^gflops=[\d.]+$", out, re.M)
    assert not run_dir.exists() or not any(run_dir.iterdir())


def test_the_flop_counter_counts_cpu_attention_as_the_math_path_does():
    """PyTorch 2.13's FlopCounterMode counts 0 FLOPs for CPU's fused attention kernel (#195460); ours counts it
    as the same matmuls written out, forward and backward (model FLOPs: no recomputed scores)."""
    import torch.nn.functional as F

    from diffusion.tasks.summary import flop_counter

    def attention_flops(fused: bool) -> tuple[int, set[str]]:
        q, k, v = (torch.randn(3, 4, 49, 22, requires_grad=True) for _ in range(3))
        with flop_counter() as counted:
            out = (F.scaled_dot_product_attention(q, k, v) if fused
                   else torch.softmax(q @ k.transpose(-2, -1) / 22 ** 0.5, dim=-1) @ v)
            out.square().sum().backward()
        return counted.get_total_flops(), {str(op) for op in counted.get_flop_counts()["Global"]}

    written_out, _ = attention_flops(False)
    assert written_out == 3 * 2 * 2 * (3 * 4 * 49 * 49 * 22)  # forward 2 matmuls, backward 4; 2 FLOPs a multiply-add
    fused, ops = attention_flops(True)
    assert "aten._scaled_dot_product_flash_attention_for_cpu" in ops  # the fused kernel ran
    assert fused == written_out

"""Inception Score and sFID beside FID: the score's closed forms, and the evaluator's extra views of each image
(class probabilities, spatial features) read through a small stand-in with the Inception's layer names."""

from __future__ import annotations

import hashlib

import pytest
import torch
from torch import nn

from diffusion.data import DigitsData
from diffusion.evaluation import inception
from diffusion.evaluation.inception import InceptionEvaluator, InceptionHeads, inception_score


def test_inception_score_is_the_class_count_for_confident_balanced_labels_and_one_for_a_single_class():
    confident = torch.eye(5, dtype=torch.float64).repeat(4, 1)  # (20, 5): every class 4 times, with certainty
    assert inception_score(confident) == pytest.approx(5.0)
    assert inception_score(torch.eye(5, dtype=torch.float64)[[2] * 20]) == pytest.approx(1.0)
    assert inception_score(torch.full((20, 5), 0.2, dtype=torch.float64)) == pytest.approx(1.0)


class _TinyInception(nn.Module):
    """Stands in for the FID Inception: uint8 (N, 3, H, W) -> pool features (N, 12); ``Mixed_6d.branch1x1``
    gives a (N, 8, 4, 4) map and ``fc`` 10 logits, as the real network's 192 x 17 x 17 and 1008 do."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.Mixed_6d = nn.Module()
        self.Mixed_6d.branch1x1 = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU())
        self.fc = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255
        self.Mixed_6d.branch1x1(nn.functional.adaptive_avg_pool2d(x, 4))
        return nn.functional.adaptive_avg_pool2d(x, 2).flatten(1) * 10


def test_heads_give_probabilities_and_the_first_seven_spatial_channels_channel_last():
    heads = InceptionHeads(_TinyInception())
    pixels = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    views = heads(pixels)
    network = heads.network
    spatial = network.Mixed_6d.branch1x1(nn.functional.adaptive_avg_pool2d(pixels.float() / 255, 4))[:, :7]
    assert torch.allclose(views["spatial"], spatial.permute(0, 2, 3, 1).reshape(3, -1))  # (3, 4 * 4 * 7)
    assert torch.allclose(views["probs"], (views["pool"] @ network.fc.weight.T).softmax(1))  # unbiased logits
    assert torch.allclose(views["probs"].sum(1), torch.ones(3))


def test_evaluator_scores_inception_score_and_sfid_with_floors(tmp_path, monkeypatch):
    monkeypatch.setattr(inception, "inception_unavailable_reason", lambda path: None)
    monkeypatch.setattr(inception, "load_inception", lambda path: _TinyInception())
    weights = tmp_path / "stand-in.pth"
    weights.write_bytes(b"stand-in")
    data = DigitsData()
    evaluator = InceptionEvaluator(weights_path=str(weights), weights_sha256=hashlib.sha256(b"stand-in").hexdigest(),
                                   inception_score=True, sfid=True, num_samples=32, reference_size=256,
                                   floor_draws=4, floor_cache_dir=str(tmp_path / "floors"), neighbour_metrics=False)
    evaluator.prepare(data)
    real = evaluator.evaluate(data.prepare_batch(data.load().val[:32]))
    noise = evaluator.evaluate(torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1)
    assert set(real) == {"fid", "kid", "inception_score", "sfid"} == set(evaluator.metric_names)
    assert all(score.floor is not None and score.std_error is not None for score in real.values())
    assert real["inception_score"].higher_is_better and 1.0 <= real["inception_score"].value <= 10.0
    assert noise["sfid"].value > real["sfid"].value and noise["fid"].value > real["fid"].value
    assert evaluator.reference_features().shape == (256, 12)  # FID, KID and neighbours read the pool features

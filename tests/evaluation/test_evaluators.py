"""Evaluators on the bundled data: real held-out data scores near its floor, noise far above it; report layouts;
the Inception evaluator without its weights; scoring one model at several sampler step counts."""

from __future__ import annotations

import hashlib

import json
import logging
import math
import socket
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from runs import ROOT
from torch import nn

from diffusion.app.build import make_evaluator
from diffusion.data import DigitsData, MoonsData
from diffusion.evaluation import inception
from diffusion.evaluation.digits import DigitsEvaluator
from diffusion.evaluation.evaluators import (
    BaseEvaluator,
    MetricValue,
    NoneEvaluator,
    chunk_slices,
)
from diffusion.evaluation.inception import InceptionEvaluator
from diffusion.evaluation.points import PointsEvaluator
from diffusion.evaluation.results import (
    format_metrics,
    format_steps_table,
    metrics_to_json,
)
from diffusion.methods import GaussianDiffusion
from diffusion.tasks.sample_and_score import evaluate_at_steps
from diffusion.sampling.sampler import Sampler
from diffusion.methods.schedules import linear_betas
from diffusion.runtime.checks import ConfigError

DIGIT_METRICS = {"fd", "kid", "class_coverage", "class_kl", "confidence"}
POINT_METRICS = {"sliced_wasserstein", "mmd", "energy"}


@pytest.fixture(scope="module")
def digits() -> DigitsData:
    return DigitsData()


@pytest.fixture(scope="module")
def digits_evaluator(digits: DigitsData) -> DigitsEvaluator:
    evaluator = DigitsEvaluator(num_samples=1000, bootstrap=0)  # error bars: tests/evaluation/
    evaluator.prepare(digits)
    return evaluator


@pytest.fixture(scope="module")
def moons() -> MoonsData:
    return MoonsData(num_samples=2000)


@pytest.fixture(scope="module")
def points_evaluator(moons: MoonsData) -> PointsEvaluator:
    evaluator = PointsEvaluator(num_samples=200, reference_size=1000, bootstrap=0)
    evaluator.prepare(moons)
    return evaluator


def _noise_images(num: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(num, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# --------------------------------------------------------------------------------------------------- digits


def test_held_out_digits_score_near_their_floor_and_noise_far_above(
    digits: DigitsData, digits_evaluator: DigitsEvaluator
) -> None:
    val = digits.load().val
    half = val[: len(val) // 2]  # real digits the reference never saw; the floor is then scored at this n too
    real = digits_evaluator.evaluate(half)
    noise = digits_evaluator.evaluate(_noise_images(1000))
    assert set(real) == set(noise) == DIGIT_METRICS == set(digits_evaluator.metric_names)
    assert all(metric.floor is not None and math.isfinite(metric.value) for metric in real.values())
    assert real["fd"].value < 1.5 * real["fd"].floor
    assert noise["fd"].value > 10 * noise["fd"].floor
    assert noise["fd"].value > 10 * real["fd"].value
    assert noise["kid"].value > 10 * max(real["kid"].value, noise["kid"].floor, 1e-3)
    assert noise["class_coverage"].value < 1.0 or noise["class_kl"].value > 5 * noise["class_kl"].floor
    assert noise["confidence"].value < real["confidence"].value
    assert real["class_coverage"].higher_is_better and not real["fd"].higher_is_better


def test_floor_uses_the_same_sample_count_as_the_samples(digits: DigitsData, digits_evaluator: DigitsEvaluator) -> None:
    val = digits.load().val
    # Scoring the whole validation set reproduces the default split's draw of the floor: same rows, same n, same
    # reference (up to float32 round-off of the classifier features, which differ in the last bits between
    # batchings and thread counts). The floor itself is the mean over re-partitions, and that draw lies in them.
    scores = digits_evaluator.evaluate(val)
    one_draw = digits_evaluator._score(digits_evaluator._prepared_val(), len(val), digits_evaluator._real())
    for name, metric in scores.items():
        assert metric.value == pytest.approx(one_draw[name].value, rel=1e-6, abs=1e-9), name
        assert metric.floor is not None and metric.floor_std is not None
        assert abs(metric.value - metric.floor) <= 4 * metric.floor_std + 1e-12, name
    # More samples than val: scored in chunks of len(val), against the floor at len(val).
    assert digits_evaluator.floor(1000) is digits_evaluator.floor(len(val))


def test_batches_accumulate_like_one_batch(digits_evaluator: DigitsEvaluator) -> None:
    samples = _noise_images(300, seed=1)
    whole = digits_evaluator.evaluate(samples)
    digits_evaluator.reset()
    for batch in samples.split(128):
        digits_evaluator.update(batch)
    assert digits_evaluator.compute() == whole


def test_prepare_is_idempotent(digits: DigitsData, digits_evaluator: DigitsEvaluator) -> None:
    reference = digits_evaluator._reference
    digits_evaluator.prepare(digits)
    assert digits_evaluator._reference is reference


def test_unprepared_or_mismatched_evaluators_fail_clearly(moons: MoonsData) -> None:
    with pytest.raises(RuntimeError, match="prepare"):
        DigitsEvaluator().update(_noise_images(4))
    with pytest.raises(ConfigError, match="evaluator=digits"):
        DigitsEvaluator().prepare(moons)
    with pytest.raises(ConfigError, match="evaluator.num_samples"):
        DigitsEvaluator(num_samples=1)
    with pytest.raises(ConfigError, match="evaluator.sampler_steps"):
        PointsEvaluator(sampler_steps=[10, 0])
    with pytest.raises(ConfigError, match="evaluator.every_n_epochs"):
        PointsEvaluator(every_n_epochs=-1)


def test_is_due_follows_every_n_epochs() -> None:
    assert [PointsEvaluator(every_n_epochs=2).is_due(epoch) for epoch in (1, 2, 3, 4)] == [False, True, False, True]
    assert not PointsEvaluator(every_n_epochs=0).is_due(5)
    assert not NoneEvaluator().is_due(1) and NoneEvaluator().evaluate(torch.zeros(2, 2)) == {}


# --------------------------------------------------------------------------------------------------- points


def test_moons_held_out_points_score_near_their_floor_and_noise_far_above(
    moons: MoonsData, points_evaluator: PointsEvaluator
) -> None:
    val = moons.load().val  # 200 points
    real = points_evaluator.evaluate(val[:100])
    noise = points_evaluator.evaluate(torch.randn(200, 2, generator=torch.Generator().manual_seed(0)))
    assert set(real) == set(noise) == POINT_METRICS == set(points_evaluator.metric_names)
    assert real["sliced_wasserstein"].value < 2 * real["sliced_wasserstein"].floor
    assert noise["sliced_wasserstein"].value > 3 * noise["sliced_wasserstein"].floor
    # N(0, I) shares the standardised moons' mean and variance, so the margins are smaller than for digits.
    assert noise["energy"].value > 3 * max(real["energy"].value, noise["energy"].floor)
    assert noise["mmd"].value > 3 * max(real["mmd"].value, noise["mmd"].floor, 1e-4)


def test_chunks_cover_every_row_with_equal_sizes() -> None:
    assert chunk_slices(10, 10) == [slice(0, 10)]
    assert chunk_slices(10, 4) == [slice(0, 4), slice(4, 8), slice(6, 10)]
    with pytest.raises(ValueError):
        chunk_slices(3, 4)


# -------------------------------------------------------------------------------------------------- reports


def test_eval_json_layout_is_well_formed(points_evaluator: PointsEvaluator, moons: MoonsData) -> None:
    metrics = points_evaluator.evaluate(moons.load().val)
    metrics["undefined"] = MetricValue(float("nan"), floor=None, std_error=float("nan"))
    record = json.loads(json.dumps(metrics_to_json(metrics, 200, "ddim", 50, 0.002), allow_nan=False))
    assert record["num_samples"] == 200 and record["sampler"] == "ddim" and record["steps"] == 50
    assert record["seconds_per_sample"] == pytest.approx(0.002)
    for name in POINT_METRICS:
        assert set(record[name]) >= {"value", "floor"} and isinstance(record[name]["floor"], float)
    assert record["undefined"]["value"] is None and record["undefined"]["floor"] is None
    with pytest.raises(ValueError, match="clash"):
        metrics_to_json({"steps": MetricValue(1.0)}, 1, "ddpm", 1, 0.1)


def test_format_metrics_prints_each_score_beside_its_floor() -> None:
    coverage = MetricValue(0.9, 1.0, higher_is_better=True)
    text = format_metrics({"fd": MetricValue(1.9, 0.4), "class_coverage": coverage})
    assert text.splitlines() == ["fd: 1.9 (real-data floor 0.4; 4.75x)", "class_coverage: 0.9 (real data 1; 0.9x)"]
    assert format_metrics({}) == "no metrics"


# ------------------------------------------------------------------------------------------------ inception


def _refuse_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the evaluator tried to download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_inception_without_weights_says_how_to_get_them_and_goes_on(
    tmp_path: Path, digits: DigitsData, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _refuse_network(monkeypatch)
    weights = tmp_path / "empty" / inception.INCEPTION_WEIGHTS_FILE
    evaluator = InceptionEvaluator(num_samples=16, weights_path=str(weights), every_n_epochs=1)
    with caplog.at_level(logging.WARNING):
        evaluator.prepare(digits)
        evaluator.prepare(digits)
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 1 and "\n" not in messages[0]
    assert "pip install" in messages[0] and str(weights) in messages[0]
    assert evaluator.unavailable_reason == messages[0]
    assert evaluator.evaluate(_noise_images(16)) == {}
    assert not evaluator.is_due(1)


class _PooledPixels(nn.Module):
    """Stands in for the Inception network: uint8 (N, 3, H, W) -> (N, 12) pooled pixel features."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.adaptive_avg_pool2d(x.float() / 255, 2).flatten(1)


def test_inception_with_weights_scores_fid_and_kid_with_floors(
    tmp_path: Path, digits: DigitsData, monkeypatch: pytest.MonkeyPatch
) -> None:
    _refuse_network(monkeypatch)
    weights = tmp_path / inception.INCEPTION_WEIGHTS_FILE
    weights.write_bytes(b"stand-in weights")
    monkeypatch.setattr(inception, "inception_unavailable_reason", lambda path: None)
    monkeypatch.setattr(inception, "load_inception", lambda path: _PooledPixels())
    digest = hashlib.sha256(b"stand-in weights").hexdigest()
    evaluator = InceptionEvaluator(num_samples=64, weights_path=str(weights), reference_size=256,
                                   weights_sha256=digest[:8].upper())  # a prefix, in either case, is enough
    evaluator.prepare(digits)
    scores = evaluator.evaluate(_noise_images(64))
    assert set(scores) == {"fid", "kid"} and all(metric.floor is not None for metric in scores.values())
    assert scores["fid"].value > scores["fid"].floor


def test_inception_weights_with_another_sha256_are_refused_before_loading(
    tmp_path: Path, digits: DigitsData, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = tmp_path / inception.INCEPTION_WEIGHTS_FILE
    weights.write_bytes(b"truncated download")
    monkeypatch.setattr(inception, "inception_unavailable_reason", lambda path: None)
    loaded = []
    monkeypatch.setattr(inception, "load_inception", lambda path: loaded.append(path) or _PooledPixels())
    evaluator = InceptionEvaluator(num_samples=16, weights_path=str(weights))  # expects torch-fidelity's file
    with pytest.raises(ConfigError) as error:
        evaluator.prepare(digits)
    message = str(error.value)
    assert "\n" not in message and f"evaluator.weights_path={weights}" in message
    assert hashlib.sha256(b"truncated download").hexdigest() in message and inception.INCEPTION_WEIGHTS_SHA256 in message
    assert loaded == []
    for bad in ("6726825", "not-a-digest", "0" * 65):
        with pytest.raises(ConfigError, match=r"^evaluator\.weights_sha256="):
            InceptionEvaluator(weights_sha256=bad)


# ----------------------------------------------------------------------------------------- sampler steps


class _TinyDenoiser(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, t[:, None].float() / 20], dim=1))


@pytest.mark.parametrize(("solver", "expected_steps"), [("ddim", [2, 5]), ("ddpm", [20])])
def test_evaluate_at_steps_scores_each_step_count_with_its_time(
    points_evaluator: PointsEvaluator, solver: str, expected_steps: list[int]
) -> None:
    torch.manual_seed(0)
    method = GaussianDiffusion(linear_betas, num_timesteps=20, clip_denoised=False, default_solver=solver)
    sampler = Sampler(_TinyDenoiser(), method, (2,), num_samples=8, steps=None, device="cpu")
    rows, _, _ = evaluate_at_steps(sampler, points_evaluator, [2, 5])
    assert [row.steps for row in rows] == expected_steps
    assert all(row.seconds_per_sample > 0 and set(row.metrics) == POINT_METRICS for row in rows)
    assert sampler.steps is None
    table = format_steps_table(rows).splitlines()
    assert len(table) == 2 + len(rows) and "s/sample" in table[0] and "(floor" in table[2]
    with pytest.raises(ConfigError, match="evaluator.sampler_steps"):
        evaluate_at_steps(sampler, points_evaluator, [21])


# ----------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize("name", ["digits", "points", "inception", "none"])
def test_every_evaluator_config_instantiates(name: str) -> None:
    """Each evaluator config, as composed (with the ODE-score keys every one includes), builds its evaluator."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"evaluator={name}", "trainer.device=cpu"])
    assert cfg.evaluator.likelihood is False and cfg.evaluator.straightness_steps == 100
    evaluator = make_evaluator(cfg.evaluator)
    assert isinstance(evaluator, BaseEvaluator)
    assert evaluator.enabled == (name != "none")


def test_samples_sorted_by_class_are_scored_like_shuffled_ones(digits: DigitsData, digits_evaluator: DigitsEvaluator):
    """Conditional samples arrive in class blocks (``class_labels=all``); chunked FD must not see one class per
    chunk (it did: 500 real digits in class order scored FD 50.9 against a floor of 2.1)."""
    splits = digits.load()
    order = torch.argsort(splits.train_labels, stable=True)
    per_class = [order[splits.train_labels[order] == c][:50] for c in range(10)]
    in_class_order = splits.train[torch.cat(per_class)]  # (500, 1, 8, 8), class 0 first
    scores = digits_evaluator.evaluate(in_class_order)
    assert scores["class_coverage"].value == 1.0
    assert scores["fd"].value < 2 * scores["fd"].floor

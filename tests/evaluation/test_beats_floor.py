"""A score better than real data by more than the floor's spread is flagged, with the near-copy share."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from diffusion.data import MoonsData
from diffusion.evaluation import PointsEvaluator
from diffusion.evaluation.evaluators import MetricValue, beats_floor
from diffusion.evaluation.results import format_metrics, metrics_to_json


def test_the_flag_needs_a_margin_of_one_floor_std() -> None:
    assert beats_floor(MetricValue(1.1, floor=1.5, floor_std=0.3))
    assert not beats_floor(MetricValue(1.3, floor=1.5, floor_std=0.3))
    assert not beats_floor(MetricValue(1.1, floor=1.5))  # no spread known: nothing to beat
    assert beats_floor(MetricValue(0.99, floor=0.9, floor_std=0.05, higher_is_better=True))
    assert not beats_floor(MetricValue(0.5, floor=0.9, floor_std=0.05, higher_is_better=True))
    assert not beats_floor(MetricValue(float("nan"), floor=0.9, floor_std=0.05))


def test_copies_of_training_points_are_flagged_with_their_near_copy_share(tmp_path: Path) -> None:
    data = MoonsData(num_samples=600)
    evaluator = PointsEvaluator(num_samples=60, reference_size=None, floor_draws=16, bootstrap=0,
                                floor_cache_dir=str(tmp_path))
    evaluator.prepare(data)
    train = data.load().train
    copies = evaluator.evaluate(train[torch.randperm(len(train), generator=torch.Generator().manual_seed(0))][:60])
    flagged = [name for name, metric in copies.items() if metric.beats_floor]
    assert flagged, copies
    assert all(copies[name].near_copies == 1.0 for name in flagged)  # every sample is a training point
    assert "BEATS REAL DATA (near-copies of training items: 100.0%)" in format_metrics(copies)
    record = json.loads(json.dumps(metrics_to_json(copies, 60, "ddpm", 20, 0.01)))
    assert all(record[name]["beats_floor"] and record[name]["near_copies"] == 1.0 for name in flagged)
    noise = evaluator.evaluate(3 * torch.randn(60, 2, generator=torch.Generator().manual_seed(1)))
    assert not any(metric.beats_floor or metric.near_copies is not None for metric in noise.values())


def test_seed_sets_average_and_keep_the_floor_and_the_flag() -> None:
    from diffusion.evaluation.metric_value import over_seed_sets

    sets = [MetricValue(v, 1.5, 0.1, floor_std=0.3, floor_std_error=0.03, beats_floor=v < 1.2,
                        near_copies=0.02 if v < 1.2 else None) for v in (1.0, 1.1, 1.3)]
    mean = over_seed_sets(sets)
    assert abs(mean.value - 1.1333333) < 1e-6 and abs(mean.std_error - 0.1527525 / 3**0.5) < 1e-6
    assert mean.floor == 1.5 and mean.floor_std == 0.3 and mean.floor_std_error == 0.03
    assert mean.beats_floor and mean.near_copies == 0.02
    assert not over_seed_sets([MetricValue(1.4, 1.5, floor_std=0.3)]).beats_floor

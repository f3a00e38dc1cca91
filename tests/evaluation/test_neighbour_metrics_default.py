"""Precision, recall and memorization by default: every data set's evaluator config turns them on, each score
with its real-data floor; the reference's neighbour radii are computed once per real split."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from diffusion.app.build import make_evaluator
from diffusion.data import MoonsData
from diffusion.evaluation.neighbours import memorization_score, precision_recall, real_neighbours
from diffusion.evaluation.points import PointsEvaluator

CONF = Path(__file__).resolve().parents[2] / "conf"
EVALUATORS = ["digits", "mnist", "points", "moons", "swissroll", "cifar10", "image_folder"]


@pytest.mark.parametrize("name", EVALUATORS)
def test_every_evaluator_config_scores_the_neighbour_metrics(name):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"evaluator={name}"])
    assert cfg.evaluator.neighbour_metrics is True
    evaluator = make_evaluator(cfg.evaluator)
    assert {"precision", "recall", "memorization"} <= set(evaluator.metric_names)


def test_points_evaluator_scores_them_beside_their_floors(tmp_path):
    data = MoonsData(num_samples=300)
    evaluator = PointsEvaluator(num_samples=40, reference_size=200, num_projections=8, neighbour_metrics=True,
                                floor_draws=4, bootstrap=0, floor_cache_dir=str(tmp_path))
    evaluator.prepare(data)
    scores = evaluator.evaluate(data.load().val[:40])
    for name in ("precision", "recall", "memorization"):
        assert scores[name].floor is not None and scores[name].floor_std is not None, name
    assert scores["precision"].higher_is_better and scores["recall"].higher_is_better


def test_a_prepared_real_split_scores_as_the_plain_functions():
    generator = torch.Generator().manual_seed(0)
    real, heldout = torch.randn(60, 3, generator=generator), torch.randn(20, 3, generator=generator)
    fake = torch.randn(30, 3, generator=generator) + 0.3
    known = real_neighbours(real, heldout)
    assert known.precision_recall(fake) == precision_recall(real, fake)
    assert known.memorization(fake) == memorization_score(fake, real, heldout)
    with pytest.raises(ValueError, match="feature dimension"):
        known.precision_recall(torch.randn(30, 4))

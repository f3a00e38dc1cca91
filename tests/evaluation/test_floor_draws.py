"""The floor over real-data draws: re-partitions of a small held-out set, chunks of a large one, and its cache."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from diffusion.evaluation import DigitsEvaluator, PointsEvaluator
from diffusion.evaluation.floors import (
    LARGE_HELDOUT_CHUNKS,
    Floor,
    RealSplit,
    cached_floors,
    estimate_floors,
    floor_cache_key,
    real_draws,
)

KEY = {"evaluator": "DigitsEvaluator", "data": "DigitsData", "rows": "ab12", "reference_size": 1617,
       "heldout_size": 180, "n": 180, "draws": 128, "network": "9f3e", "seed": 0}


def _split(reference: int, heldout: int) -> RealSplit:
    rows = torch.arange(float(reference + heldout), dtype=torch.float64)[:, None]  # (R + V, 1), distinct rows
    return RealSplit(rows[:reference], rows[reference:])


def test_small_heldout_sets_are_repartitioned_at_the_run_sizes() -> None:
    real = _split(90, 10)
    draws = real_draws(real, n=10, draws=5, seed=0)
    assert len(draws) == 5
    for heldout, split in draws:
        assert len(heldout) == 10 and len(split.reference) == 90 and split.heldout is heldout
        union = torch.cat([split.reference, heldout]).flatten().sort().values
        assert torch.equal(union, torch.arange(100.0, dtype=torch.float64))  # a partition of the pooled rows
    assert not torch.equal(draws[0][0], draws[1][0])
    assert all(torch.equal(a[0], b[0]) for a, b in zip(draws, real_draws(real, 10, 5, seed=0)))


def test_large_heldout_sets_keep_their_split_and_give_disjoint_chunks() -> None:
    real = _split(50, LARGE_HELDOUT_CHUNKS * 7 + 3)
    draws = real_draws(real, n=7, draws=99, seed=0)
    assert len(draws) == LARGE_HELDOUT_CHUNKS  # one draw per disjoint chunk of n, the draws setting ignored
    assert all(split is real and len(chunk) == 7 for chunk, split in draws)
    assert len(torch.cat([chunk for chunk, _ in draws]).unique()) == 7 * LARGE_HELDOUT_CHUNKS


def test_the_floor_is_the_mean_std_and_standard_error_over_draws() -> None:
    real = _split(90, 10)
    floors = estimate_floors(real, 10, 64, 0, lambda heldout, split: {"mean": heldout.mean().item()})
    values = torch.tensor([h.mean().item() for h, _ in real_draws(real, 10, 64, 0)], dtype=torch.float64)
    floor = floors["mean"]
    assert floor.draws == 64 and floor.mean == pytest.approx(values.mean().item())
    assert floor.std == pytest.approx(values.std().item())
    assert floor.std_error == pytest.approx(floor.std / 8)


def test_the_cache_key_changes_with_every_field_it_names() -> None:
    base = floor_cache_key(KEY)
    assert floor_cache_key(dict(reversed(list(KEY.items())))) == base  # order does not matter
    for field, other in [("data", "MNISTData"), ("rows", "cd34"), ("reference_size", 1000), ("heldout_size", 90),
                         ("n", 90), ("draws", 64), ("network", "0000"), ("seed", 1), ("evaluator", "Points")]:
        assert floor_cache_key({**KEY, field: other}) != base, field
    assert floor_cache_key({**KEY, "kid_subsets": 10}) != base


def test_cached_floors_are_computed_once_and_reread(tmp_path: Path) -> None:
    calls = []

    def compute() -> dict[str, Floor]:
        calls.append(1)
        return {"fd": Floor(1.5, 0.3, 0.03, 100), "kid": Floor(math.nan, None, None, 0)}

    first = cached_floors(tmp_path, KEY, compute)
    again = cached_floors(tmp_path, KEY, compute)
    assert len(calls) == 1 and again["fd"] == first["fd"] == Floor(1.5, 0.3, 0.03, 100)
    assert math.isnan(again["kid"].mean)
    (tmp_path / f"{floor_cache_key(KEY)}.json").write_text("{not json")
    cached_floors(tmp_path, KEY, compute)  # a damaged file is recomputed
    assert len(calls) == 2
    cached_floors(tmp_path, {**KEY, "n": 90}, compute)
    assert len(calls) == 3


def test_the_default_draws_make_the_floor_error_a_tenth_of_its_spread() -> None:
    # std_error = std / sqrt(K): under a tenth of the spread needs K > 100.
    assert 1 / math.sqrt(DigitsEvaluator().floor_draws) < 0.1
    assert PointsEvaluator().floor_draws >= 16


def test_an_evaluator_reads_its_floor_from_the_cache(tmp_path: Path) -> None:
    from diffusion.data import MoonsData

    data = MoonsData(num_samples=300)
    first = PointsEvaluator(num_samples=30, reference_size=200, floor_draws=8, floor_cache_dir=str(tmp_path))
    first.prepare(data)
    assert len(list(tmp_path.glob("*.json"))) == 1
    second = PointsEvaluator(num_samples=30, reference_size=200, floor_draws=8, floor_cache_dir=str(tmp_path))
    second.prepare(data)
    assert second.floor(30) == first.floor(30) and len(list(tmp_path.glob("*.json"))) == 1
    floor = first.floor(30)["sliced_wasserstein"]
    assert floor.draws == 8 and floor.std is not None and floor.std > 0

"""Error bars on scores: a bootstrap over generated rows, the interval of a ratio to the floor, and the tie rule.

A score's standard error says how far another N samples would move it; the bootstrap (Efron & Tibshirani 1993,
ch. 6) estimates it without fresh samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch

# Two-sided 95% normal quantile: intervals are estimate ± Z95 * standard error.
Z95 = 1.959963984540054


def bootstrap_std_errors(
    rows: torch.Tensor, statistic: Callable[[torch.Tensor], Mapping[str, float]], resamples: int, seed: int
) -> dict[str, float]:
    """Bootstrap standard error of each score of ``statistic(rows)``: the sample std of
    ``statistic(rows[idx_b])`` over ``resamples`` index draws ``idx_b`` of ``len(rows)`` with replacement
    (seeded, so a run's error bars are reproducible). Scores that come out NaN in a resample are left out."""
    if resamples < 2:
        raise ValueError(f"a bootstrap needs at least 2 resamples, got {resamples}")
    generator = torch.Generator().manual_seed(seed)
    values: dict[str, list[float]] = {}
    for _ in range(resamples):
        index = torch.randint(len(rows), (len(rows),), generator=generator)
        for name, value in statistic(rows[index]).items():
            values.setdefault(name, []).append(value)
    return {name: _std([v for v in numbers if math.isfinite(v)]) for name, numbers in values.items()}


def _std(numbers: list[float]) -> float:
    return torch.tensor(numbers, dtype=torch.float64).std().item() if len(numbers) > 1 else math.nan


class Interval(NamedTuple):
    """An estimate with its standard error and 95% interval ``[low, high]``."""

    estimate: float
    std_error: float
    low: float
    high: float


def normal_interval(estimate: float, std_error: float) -> Interval:
    """``estimate ± Z95 * std_error``."""
    return Interval(estimate, std_error, estimate - Z95 * std_error, estimate + Z95 * std_error)


def ratio_interval(value: float, value_se: float | None, floor: float, floor_se: float | None) -> Interval | None:
    """The ratio r = value / floor with its delta-method standard error

        se(r) = sqrt(se(value)^2 + r^2 se(floor)^2) / |floor|

    (the two independent); None where the floor is within Z95 standard errors of 0 (as KID's and MMD's are)."""
    if not (math.isfinite(value) and math.isfinite(floor)) or floor <= Z95 * (floor_se or 0.0) or floor <= 0:
        return None
    ratio = value / floor
    std_error = math.sqrt((value_se or 0.0) ** 2 + ratio**2 * (floor_se or 0.0) ** 2) / floor
    return normal_interval(ratio, std_error)


class Difference(NamedTuple):
    """``other - baseline`` of one score with its 95% interval; ``tie`` when the interval holds zero."""

    metric: str
    baseline: float
    other: float
    interval: Interval
    tie: bool


def difference(metric: str, baseline: float, baseline_se: float | None, other: float,
               other_se: float | None) -> Difference:
    """The difference of two independent scores, se = sqrt(se_a^2 + se_b^2); a tie when ``|d| <= Z95 * se``.
    A score without a standard error counts as exact (se 0), so two such scores tie only when equal."""
    std_error = math.sqrt((baseline_se or 0.0) ** 2 + (other_se or 0.0) ** 2)
    interval = normal_interval(other - baseline, std_error)
    return Difference(metric, baseline, other, interval, interval.low <= 0.0 <= interval.high)

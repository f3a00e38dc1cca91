"""One score as every evaluator reports it: its value and error bar beside the real-data floor, and the flag for a
score that beats real data."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import NamedTuple

from diffusion.evaluation.floors import Floor

# Scores where doing better than real data is no sign of copying (fewer near-copies than fresh data is fine).
NOT_FLAGGED = ("memorization",)


class MetricValue(NamedTuple):
    """One score beside its real-data ``floor`` at the same sample count (:mod:`~diffusion.evaluation.floors`), their
    error bars, and ``beats_floor`` (:func:`beats_floor`) with the share of near-copies when a score beats it."""

    value: float
    floor: float | None = None
    std_error: float | None = None
    higher_is_better: bool = False
    floor_std: float | None = None
    floor_std_error: float | None = None
    beats_floor: bool = False
    near_copies: float | None = None


def beats_floor(metric: MetricValue) -> bool:
    """Whether ``metric`` is better than real data by more than one draw of real data strays from the floor
    mean: ``value < floor - floor_std`` (``>`` ``floor + floor_std`` where higher is better)."""
    if metric.floor is None or metric.floor_std is None or not math.isfinite(metric.value):
        return False
    if metric.higher_is_better:
        return metric.value > metric.floor + metric.floor_std
    return metric.value < metric.floor - metric.floor_std


def with_floor(score: MetricValue, floor: Floor | None) -> MetricValue:
    """``score`` with the floor's mean, std and standard error, and :func:`beats_floor` set."""
    if floor is None:
        return score
    score = score._replace(floor=floor.mean, floor_std=floor.std, floor_std_error=floor.std_error)
    return score._replace(beats_floor=beats_floor(score))


def over_seed_sets(values: Sequence[MetricValue]) -> MetricValue:
    """One metric over disjoint sample sets (``evaluator.seeds``): the mean, standard error std / sqrt(sets)
    (0 for one set), the first set's floor, the flag re-judged on the mean, and the mean near-copy share of the
    sets that measured one."""
    numbers = [v.value for v in values]
    std = statistics.stdev(numbers) if len(numbers) > 1 else 0.0
    mean = values[0]._replace(value=statistics.fmean(numbers), std_error=std / math.sqrt(len(numbers)),
                              beats_floor=False, near_copies=None)
    flagged = beats_floor(mean)
    copies = [v.near_copies for v in values if v.near_copies is not None]
    return mean._replace(beats_floor=flagged, near_copies=statistics.fmean(copies) if flagged and copies else None)

"""Jobs of a sweep that differ only in ``seed``: one group, summarized by the mean and std of each metric.

Ranking ``seed=0,1,2 trainer.lr=1e-4,3e-4`` job by job would mistake seed noise for a learning-rate effect.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

SEED_KEY = "seed"


def override_key(override: str) -> str:
    """``seed`` of ``seed=3``, ``+seed=3`` and ``++seed=3``."""
    return override.split("=", 1)[0].lstrip("+~")


def without_seed(overrides: Sequence[str]) -> tuple[str, ...]:
    return tuple(o for o in overrides if override_key(o) != SEED_KEY)


def has_seed(overrides: Sequence[str]) -> bool:
    return any(override_key(o) == SEED_KEY for o in overrides)


@dataclass
class SeedGroup:
    """Jobs whose overrides are equal once ``seed`` is left out (a job without a seed override is its own group)."""

    overrides: tuple[str, ...]
    jobs: list[Any] = field(default_factory=list)  # report.JobResult

    @property
    def seeds(self) -> int:
        return len(self.jobs)

    def mean_std(self, value: Callable[[Any], float]) -> tuple[float, float]:
        """Mean and sample standard deviation over the jobs that reached a finite value (std NaN for one)."""
        return mean_std([value(job) for job in self.jobs])

    def mean_curve(self) -> tuple[list[float], list[float]]:
        """Per-epoch mean and standard deviation of the validation-loss curves (epochs some seed reached)."""
        length = max((len(job.val_curve) for job in self.jobs), default=0)
        columns = [[job.val_curve[e] for job in self.jobs if e < len(job.val_curve)] for e in range(length)]
        pairs = [mean_std(column) for column in columns]
        return [m for m, _ in pairs], [0.0 if math.isnan(s) else s for _, s in pairs]

    def status(self) -> str:
        """``3 completed`` or ``2 completed, 1 failed``."""
        counts: dict[str, int] = {}
        for job in self.jobs:
            counts[job.status] = counts.get(job.status, 0) + 1
        return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else math.nan


def group_by_seed(jobs: Sequence[Any]) -> list[SeedGroup]:
    """Groups in order of their first job; jobs without a ``seed`` override never join another job's group."""
    groups: dict[tuple[Any, ...], SeedGroup] = {}
    for index, job in enumerate(jobs):
        key: tuple[Any, ...] = without_seed(job.overrides) if has_seed(job.overrides) else ("job", index)
        groups.setdefault(key, SeedGroup(without_seed(job.overrides))).jobs.append(job)
    return list(groups.values())


def rank_groups(groups: Sequence[SeedGroup], objective: Callable[[Any], float]) -> list[SeedGroup]:
    """Lowest mean objective first; groups where no seed reached it last."""
    def key(group: SeedGroup) -> tuple[bool, float]:
        mean = group.mean_std(objective)[0]
        return (not math.isfinite(mean), mean if math.isfinite(mean) else 0.0)

    return sorted(groups, key=key)

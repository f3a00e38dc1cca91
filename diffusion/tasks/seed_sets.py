"""``evaluator.seeds=[0,1,2]``: one checkpoint scored on disjoint sample sets, reported as EDM2 does (the mean with
its standard deviation over the sets, and the minimum), for the final evaluation and for each step count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from diffusion.evaluation.evaluators import BaseEvaluator, MetricValue
from diffusion.evaluation.metric_value import over_seed_sets
from diffusion.evaluation.results import format_number, metric_values, metrics_to_json, seed_spread
from diffusion.loggers.base import BaseLogger
from diffusion.sampling.sampler import Sampler, SampleResult

SeedScores = list[dict[str, MetricValue]]  # one dict of scores per seed, in evaluator.seeds order


def json_number(x: float) -> float | None:
    """A finite float, or None (JSON has no NaN)."""
    return float(x) if math.isfinite(x) else None


def seed_set_scores(evaluator: BaseEvaluator, sampler: Sampler, first: SampleResult, count: int) -> SeedScores:
    """Score ``first`` (the first seed's set) and a fresh, disjoint set of ``count`` samples per further seed s
    (sample indices from ``s * count``); every rank samples its share, rank 0 alone scores ([] elsewhere)."""
    main = sampler.distributed.is_main
    per_seed: SeedScores = []
    for position, seed in enumerate(evaluator.seeds or [0]):
        result = first if position == 0 else sampler.sample(num_samples=count, first_index=seed * count)
        if main:
            per_seed.append(evaluator.evaluate(result.samples[: evaluator.num_samples]))
    return per_seed


def seed_summary(values: Sequence[MetricValue]) -> tuple[MetricValue, float, float]:
    """One metric over the sets: its mean (as a MetricValue: the first set's floor, standard error std / sqrt(n)),
    the sample standard deviation (0 for one set) and the minimum."""
    return over_seed_sets(values), *seed_spread([v.value for v in values])


def seed_means(per_seed: SeedScores) -> dict[str, MetricValue]:
    """Each metric's mean over the sets (standard error std / sqrt(sets), the first set's floor)."""
    return {name: over_seed_sets([scores[name] for scores in per_seed]) for name in per_seed[0]}


def add_seed_fields(entries: dict[str, Any], per_seed: SeedScores) -> dict[str, Any]:
    """``per_seed``, ``std_over_seeds`` and ``min_over_seeds`` (EDM reports the minimum of three) beside each
    metric's entry of an ``eval.json`` record; returns ``entries``."""
    for name in per_seed[0]:
        std, minimum = seed_spread([scores[name].value for scores in per_seed])
        entries[name].update(per_seed=[json_number(scores[name].value) for scores in per_seed],
                             std_over_seeds=json_number(std), min_over_seeds=json_number(minimum))
    return entries


def seeds_payload(evaluator: BaseEvaluator, sampler: Sampler, per_seed: SeedScores, first: SampleResult,
                  seconds_per_sample: float, logger: BaseLogger) -> dict[str, Any]:
    """The ``eval.json`` record of scores over ``evaluator.seeds``: each metric's mean as its ``value`` with
    :func:`add_seed_fields`, and ``seeds``; the per-seed table and the means are logged."""
    seeds = list(evaluator.seeds or [0])
    means = seed_means(per_seed)
    payload = metrics_to_json(means, evaluator.num_samples, sampler.name, first.steps, seconds_per_sample,
                              nfe=first.nfe)
    add_seed_fields(payload, per_seed)
    payload["seeds"] = seeds
    logger.log(f"evaluation of {len(seeds)} disjoint sets of {evaluator.num_samples} samples (evaluator.seeds="
               f"{seeds}; {sampler.name}, {first.steps} steps, {first.nfe} NFE):\n"
               + format_seeds_table(seeds, per_seed, means))
    logger.log(metric_values(means))
    return payload


def format_seeds_table(seeds: Sequence[int], per_seed: SeedScores, means: dict[str, MetricValue]) -> str:
    """A markdown table: one row per metric, one column per seed, then mean, std, min and the real-data floor."""
    header = ["metric", *(f"seed {s}" for s in seeds), "mean", "std", "min", "floor"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, mean in means.items():
        std, minimum = seed_spread([scores[name].value for scores in per_seed])
        cells = [name, *(format_number(scores[name].value) for scores in per_seed), format_number(mean.value),
                 format_number(std), format_number(minimum), format_number(mean.floor)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)

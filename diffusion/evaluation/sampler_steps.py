"""Score one checkpoint at several sampler step counts (``evaluator.sampler_steps``), with wall time per sample.

This is the DDIM paper's trade-off table (Song et al. 2021, Table 1): quality against the number of network
evaluations, for the same trained weights and the same initial noise (the sampler's seed).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from diffusion.evaluation.evaluators import BaseEvaluator, MetricValue
from diffusion.evaluation.reports import format_floor, format_number, format_value
from diffusion.validation import ConfigError, check_int

if TYPE_CHECKING:
    from diffusion.sampler import Sampler


class StepsRow(NamedTuple):
    """One row of the table: the method's name, the steps it actually ran, its scores, and sampling wall seconds
    per sample (evaluation time excluded)."""

    sampler: str
    steps: int
    metrics: dict[str, MetricValue]
    seconds_per_sample: float


def method_name(sampler: Sampler) -> str:
    """``ddpm`` or ``ddim``: the lower-cased class name of the sampler's method."""
    return type(sampler.method).__name__.lower()


def evaluate_at_steps(sampler: Sampler, evaluator: BaseEvaluator, steps_list: Sequence[int]) -> list[StepsRow]:
    """Sample ``evaluator.num_samples`` with each step count in ``steps_list`` and score them.

    The sampler's weights, seed and other settings are kept; only ``sampler.steps`` changes, and it is restored
    afterwards. The row reports the number of steps the method really ran: DDPM always runs all T, so for DDPM the
    step counts collapse into one row (a step count whose trajectory was already scored is skipped).
    ``evaluator.prepare(data)`` must have run.

    Raises:
        ConfigError: if a step count is not in ``[1, method.num_timesteps]``, or the evaluator is ``none``.
        RuntimeError: if the evaluator has not been prepared.
    """
    if not evaluator.enabled:
        raise ConfigError("evaluator.sampler_steps needs an evaluator that scores; evaluator=none scores nothing")
    num_timesteps = sampler.method.num_timesteps
    checked = [check_int(s, "evaluator.sampler_steps", minimum=1, maximum=num_timesteps) for s in steps_list]
    rows: list[StepsRow] = []
    seen: set[int] = set()
    original_steps = sampler.steps
    try:
        for steps in checked:
            actual = len(sampler.method.timestep_pairs(steps, sampler.timestep_spacing))
            if actual in seen:
                continue
            seen.add(actual)
            sampler.steps = steps
            start = time.perf_counter()
            result = sampler.sample(num_samples=evaluator.num_samples)
            seconds = time.perf_counter() - start
            metrics = evaluator.evaluate(result.samples)
            rows.append(StepsRow(method_name(sampler), result.steps, metrics, seconds / len(result.samples)))
    finally:
        sampler.steps = original_steps
    return rows


def format_steps_table(rows: Sequence[StepsRow]) -> str:
    """A markdown table: one row per step count, one column per metric (``value ± se (floor f)``), and
    ``s/sample``. Metric columns appear in the order they are first met."""
    names: list[str] = []
    for row in rows:
        names += [name for name in row.metrics if name not in names]
    header = ["sampler", "steps", *names, "s/sample"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row.sampler, str(row.steps)]
        for name in names:
            metric = row.metrics.get(name)
            floor = format_floor(metric, short=True) if metric is not None else ""
            cell = "" if metric is None else format_value(metric) + (f" ({floor})" if floor else "")
            cells.append(cell)
        cells.append(format_number(row.seconds_per_sample))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)

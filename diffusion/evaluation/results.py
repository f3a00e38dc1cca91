"""Evaluation results as text (``fd: 1.9 (real-data floor 0.4)``), as a table per sampler step count, and as
the ``eval.json`` layout of a run."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from diffusion.evaluation.evaluators import MetricValue

# Top-level eval.json keys that are not metrics; no metric may take one of these names.
EVAL_JSON_KEYS = ("num_samples", "sampler", "steps", "nfe", "seconds_per_sample")


def format_number(x: float | None) -> str:
    """Four significant digits; ``n/a`` for None or NaN."""
    if x is None or math.isnan(x):
        return "n/a"
    return f"{x:.4g}"


def format_value(metric: MetricValue) -> str:
    """``1.93 ± 0.05`` (the ± part only when a finite standard error is known)."""
    text = format_number(metric.value)
    if metric.std_error is not None and math.isfinite(metric.std_error):
        text += f" ± {format_number(metric.std_error)}"
    return text


def format_floor(metric: MetricValue, short: bool = False) -> str:
    """``real-data floor 0.41`` for lower-is-better metrics, ``real data 0.98`` for higher-is-better ones
    (coverage, confidence: there the real-data value is a ceiling); ``short`` drops the ``real-data`` prefix."""
    if metric.floor is None:
        return ""
    if metric.higher_is_better:
        label = "real" if short else "real data"
    else:
        label = "floor" if short else "real-data floor"
    return f"{label} {format_number(metric.floor)}"


def format_metrics(metrics: Mapping[str, MetricValue]) -> str:
    """One line per metric: ``fd: 1.93 ± 0.05 (real-data floor 0.41)``; ``no metrics`` when empty."""
    if not metrics:
        return "no metrics"
    lines = []
    for name, metric in metrics.items():
        floor = format_floor(metric)
        lines.append(f"{name}: {format_value(metric)}" + (f" ({floor})" if floor else ""))
    return "\n".join(lines)


def metric_values(metrics: Mapping[str, MetricValue]) -> dict[str, float]:
    """``{name: value}``, for loggers and for ``trainer.monitor`` (e.g. ``monitor=fd``)."""
    return {name: metric.value for name, metric in metrics.items()}


class StepsRow(NamedTuple):
    """One row of a step-count table (``evaluator.sampler_steps``): the method's name, the steps it actually ran,
    the network evaluations they cost, its scores, and sampling wall seconds per sample (evaluation excluded)."""

    sampler: str
    steps: int
    metrics: dict[str, MetricValue]
    seconds_per_sample: float
    nfe: int | None = None


def format_steps_table(rows: Sequence[StepsRow]) -> str:
    """A markdown table: one row per step count, one column per metric (``value ± se (floor f)``), and
    ``s/sample``. Metric columns appear in the order they are first met."""
    names: list[str] = []
    for row in rows:
        names += [name for name in row.metrics if name not in names]
    header = ["sampler", "steps", "NFE", *names, "s/sample"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row.sampler, str(row.steps), str(row.nfe if row.nfe is not None else row.steps)]
        for name in names:
            metric = row.metrics.get(name)
            floor = format_floor(metric, short=True) if metric is not None else ""
            cell = "" if metric is None else format_value(metric) + (f" ({floor})" if floor else "")
            cells.append(cell)
        cells.append(format_number(row.seconds_per_sample))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _json_float(x: float | None) -> float | None:
    # JSON has no NaN or infinity: a missing or undefined number is null.
    return None if x is None or not math.isfinite(x) else float(x)


def metrics_to_json(
    metrics: Mapping[str, MetricValue],
    num_samples: int,
    sampler: str,
    steps: int,
    seconds_per_sample: float | None,
    nfe: int | None = None,
) -> dict[str, Any]:
    """The ``eval.json`` layout: each metric maps to ``{"value", "floor"}`` (and ``"std_error"``), beside
    ``num_samples``, ``sampler``, ``steps``, ``nfe`` and ``seconds_per_sample``; non-finite numbers become null.
    """
    clashing = sorted(set(metrics) & set(EVAL_JSON_KEYS))
    if clashing:
        raise ValueError(f"metric names {clashing} clash with eval.json keys {EVAL_JSON_KEYS}")
    record: dict[str, Any] = {}
    for name, metric in metrics.items():
        entry = {"value": _json_float(metric.value), "floor": _json_float(metric.floor)}
        if metric.std_error is not None:
            entry["std_error"] = _json_float(metric.std_error)
        record[name] = entry
    record.update(
        num_samples=int(num_samples),
        sampler=str(sampler),
        steps=int(steps),
        nfe=int(steps if nfe is None else nfe),
        seconds_per_sample=_json_float(seconds_per_sample),
    )
    return record

"""Evaluation results as text (``fd: 1.9 ± 0.2 (real-data floor 1.8 ± 0.7; 1.05x [0.8, 1.3])``), as a table per
sampler step count, and as the ``eval.json`` layout of a run."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from diffusion.evaluation.evaluators import MetricValue
from diffusion.evaluation.uncertainty import Interval, ratio_interval

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
    """``real-data floor 0.41 ± 0.12`` (mean ± std over real draws) for lower-is-better metrics, ``real data
    0.98 ± 0.01`` for higher-is-better ones (coverage, confidence: there the real-data value is a ceiling), then
    the ratio to it with its 95% interval (``1.5x [1.2, 1.8]``); ``short`` drops the ``real-data`` prefix."""
    if metric.floor is None:
        return ""
    if metric.higher_is_better:
        label = "real" if short else "real data"
    else:
        label = "floor" if short else "real-data floor"
    text = f"{label} {format_number(metric.floor)}"
    if metric.floor_std is not None and math.isfinite(metric.floor_std):
        text += f" ± {format_number(metric.floor_std)}"
    ratio = floor_ratio(metric)
    if ratio is not None:
        interval = f" [{ratio.low:.3g}, {ratio.high:.3g}]" if ratio.std_error > 0 else ""
        text += f"; {ratio.estimate:.3g}x{interval}"
    return text


def floor_ratio(metric: MetricValue) -> Interval | None:
    """``value / floor`` with its 95% interval (None without a positive floor)."""
    if metric.floor is None:
        return None
    return ratio_interval(metric.value, metric.std_error, metric.floor, metric.floor_std_error)


def format_flag(metric: MetricValue) -> str:
    """``BEATS REAL DATA (near-copies 0.4%)`` for a score better than its floor by more than the floor's std."""
    if not metric.beats_floor:
        return ""
    copies = "" if metric.near_copies is None else f" (near-copies of training items: {metric.near_copies:.1%})"
    return f"BEATS REAL DATA{copies}"


def format_metrics(metrics: Mapping[str, MetricValue]) -> str:
    """One line per metric: ``fd: 1.93 ± 0.05 (real-data floor 0.41 ± 0.1; 4.7x [3.4, 6])``, then the
    beats-real-data flag where set; ``no metrics`` when empty."""
    if not metrics:
        return "no metrics"
    lines = []
    for name, metric in metrics.items():
        floor, flag = format_floor(metric), format_flag(metric)
        line = f"{name}: {format_value(metric)}" + (f" ({floor})" if floor else "")
        lines.append(line + (f" {flag}" if flag else ""))
    return "\n".join(lines)


def metric_values(metrics: Mapping[str, MetricValue]) -> dict[str, float]:
    """``{name: value}``, for loggers and for ``trainer.monitor`` (e.g. ``monitor=fd``)."""
    return {name: metric.value for name, metric in metrics.items()}


class StepsRow(NamedTuple):
    """One row of a step-count table (``evaluator.sampler_steps``): the method's name, the steps it actually ran,
    the network evaluations they cost, its scores, and sampling wall seconds per sample (evaluation excluded).
    With ``evaluator.seeds``, ``metrics`` are the means over the sets and ``per_seed`` each set's scores."""

    sampler: str
    steps: int
    metrics: dict[str, MetricValue]
    seconds_per_sample: float
    nfe: int | None = None
    per_seed: list[dict[str, MetricValue]] | None = None


class Rank(NamedTuple):
    """A row's place: ``position`` 1 for the best (None without a finite value); ``tied``: within the standard
    error of the difference of its group's leader, so it shares the leader's place instead of being ranked."""

    position: int | None
    tied: bool = False

    @property
    def label(self) -> str:
        """``3``, ``1=`` (tied for first), or empty without a value."""
        return "" if self.position is None else f"{self.position}{'=' if self.tied else ''}"


def tie_ranks(values: Sequence[float], std_errors: Sequence[float | None],
              higher_is_better: bool = False) -> list[Rank]:
    """Rank rows by value, best first, treating as ties rows whose means differ by less than their standard
    errors: |m_a - m_b| < sqrt(se_a^2 + se_b^2), the standard error of the difference (EDM2 reports a mean over
    seeds; closer than that, an order is noise). Each row is compared with its group's leader, so ties never chain
    past one standard error; a row without a standard error ties nothing."""
    def key(index: int) -> tuple[bool, float]:
        value = values[index]
        finite = math.isfinite(value)
        return (not finite, (-value if higher_is_better else value) if finite else 0.0)

    ranks = [Rank(None)] * len(values)
    leader: int | None = None
    for position, index in enumerate(sorted(range(len(values)), key=key), start=1):
        if not math.isfinite(values[index]):
            continue
        if leader is not None and _within_errors(values[index], std_errors[index], values[leader],
                                                 std_errors[leader]):
            ranks[index] = Rank(ranks[leader].position, tied=True)
            ranks[leader] = ranks[leader]._replace(tied=True)
        else:
            leader, ranks[index] = index, Rank(position)
    return ranks


def _within_errors(a: float, se_a: float | None, b: float, se_b: float | None) -> bool:
    if se_a is None or se_b is None or not (math.isfinite(se_a) and math.isfinite(se_b)):
        return False
    return abs(a - b) < math.sqrt(se_a**2 + se_b**2)


def seed_spread(numbers: Sequence[float]) -> tuple[float, float]:
    """A metric's sample standard deviation over the ``evaluator.seeds`` sets (0 for one) and its minimum."""
    std = statistics.stdev(numbers) if len(numbers) > 1 else 0.0
    return std, min(numbers)


def format_steps_table(rows: Sequence[StepsRow]) -> str:
    """A markdown table: one row per step count, one column per metric (``value ± se (floor f)``; with
    ``evaluator.seeds``, ``mean ± std, min m (floor f)`` and the best row per metric marked ``best``, rows within
    standard errors of it ``tie``), and ``s/sample``. Metric columns appear in the order they are first met."""
    names: list[str] = []
    for row in rows:
        names += [name for name in row.metrics if name not in names]
    header = ["sampler", "steps", "NFE", *names, "s/sample"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    marks = {name: _best_marks(rows, name) for name in names}
    for position, row in enumerate(rows):
        cells = [row.sampler, str(row.steps), str(row.nfe if row.nfe is not None else row.steps)]
        for name in names:
            cells.append(_steps_cell(row, name) + marks[name][position])
        cells.append(format_number(row.seconds_per_sample))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _steps_cell(row: StepsRow, name: str) -> str:
    metric = row.metrics.get(name)
    if metric is None:
        return ""
    if row.per_seed:
        std, minimum = seed_spread([scores[name].value for scores in row.per_seed])
        text = f"{format_number(metric.value)} ± {format_number(std)}, min {format_number(minimum)}"
    else:
        text = format_value(metric)
    floor = format_floor(metric, short=True)
    text += f" ({floor})" if floor else ""
    return text + (" **beats real data**" if metric.beats_floor else "")


def _best_marks(rows: Sequence[StepsRow], name: str) -> list[str]:
    """`` best`` / `` tie`` (within standard errors of the best) per row, for rows scored over several seeds."""
    if not all(row.per_seed and len(row.per_seed) > 1 and name in row.metrics for row in rows) or len(rows) < 2:
        return [""] * len(rows)
    metrics = [row.metrics[name] for row in rows]
    ranks = tie_ranks([m.value for m in metrics], [m.std_error for m in metrics], metrics[0].higher_is_better)
    return [" best" if r.position == 1 and not r.tied else " tie" if r.position == 1 else "" for r in ranks]


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
    """The ``eval.json`` layout: each metric's :func:`metric_entry` beside ``num_samples``, ``sampler``, ``steps``,
    ``nfe`` and ``seconds_per_sample``; non-finite numbers become null."""
    clashing = sorted(set(metrics) & set(EVAL_JSON_KEYS))
    if clashing:
        raise ValueError(f"metric names {clashing} clash with eval.json keys {EVAL_JSON_KEYS}")
    record: dict[str, Any] = {}
    for name, metric in metrics.items():
        record[name] = metric_entry(metric)
    record.update(
        num_samples=int(num_samples),
        sampler=str(sampler),
        steps=int(steps),
        nfe=int(steps if nfe is None else nfe),
        seconds_per_sample=_json_float(seconds_per_sample),
    )
    return record


def metric_entry(metric: MetricValue) -> dict[str, Any]:
    """One metric of ``eval.json``: value and floor with their error bars, the ratio to the floor with its 95%
    interval, and ``beats_floor`` with ``near_copies`` when flagged."""
    entry: dict[str, Any] = {"value": _json_float(metric.value), "floor": _json_float(metric.floor)}
    if metric.higher_is_better:
        entry["higher_is_better"] = True
    if metric.std_error is not None:
        entry["std_error"] = _json_float(metric.std_error)
    if metric.floor is not None:
        entry.update(floor_std=_json_float(metric.floor_std), floor_std_error=_json_float(metric.floor_std_error))
        ratio = floor_ratio(metric)
        if ratio is not None:
            entry.update(ratio=_json_float(ratio.estimate), ratio_interval=[_json_float(ratio.low),
                                                                            _json_float(ratio.high)])
        entry["beats_floor"] = bool(metric.beats_floor)
    if metric.beats_floor:
        entry["near_copies"] = _json_float(metric.near_copies)
    return entry


def read_eval_json(path: Path) -> dict[str, MetricValue]:
    """The metrics of an ``eval.json`` written by :func:`metrics_to_json` (its bookkeeping keys left out); a
    missing number reads as NaN, a missing error bar as None."""
    record = json.loads(path.read_text(encoding="utf-8"))
    metrics = {}
    for name, entry in record.items():
        if not isinstance(entry, dict) or "value" not in entry:
            continue
        number = lambda key: None if entry.get(key) is None else float(entry[key])  # noqa: E731
        value = number("value")
        metrics[name] = MetricValue(
            math.nan if value is None else value, number("floor"), number("std_error"),
            bool(entry.get("higher_is_better", False)), number("floor_std"), number("floor_std_error"),
            bool(entry.get("beats_floor", False)), number("near_copies"),
        )
    return metrics


def summary_values(record: Mapping[str, Any]) -> dict[str, float]:
    """The run summary a logger keeps (W&B's summary panel) from an ``eval.json`` record: each metric's value and
    beside it ``<metric>_se``, ``<metric>_floor``, ``<metric>_floor_std``, ``<metric>_ratio`` (with
    ``_ratio_low``/``_ratio_high``, its 95% interval) and ``<metric>_near_copies`` where flagged; nulls left out."""
    summary: dict[str, float] = {}
    for name, entry in record.items():
        if not isinstance(entry, dict) or "value" not in entry:
            continue
        low, high = entry.get("ratio_interval") or (None, None)
        fields = {"": entry.get("value"), "_se": entry.get("std_error"), "_floor": entry.get("floor"),
                  "_floor_std": entry.get("floor_std"), "_ratio": entry.get("ratio"), "_ratio_low": low,
                  "_ratio_high": high, "_near_copies": entry.get("near_copies")}
        summary |= {name + suffix: float(x) for suffix, x in fields.items() if isinstance(x, (int, float))}
    return summary

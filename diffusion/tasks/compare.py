"""``task=compare run_dir=[a,b,...]``: is one run's score really better than another's, or a tie?

Against the first run, d = b - a has se = sqrt(se_a^2 + se_b^2) (independent sample sets) and is a *tie* where
d ± 1.96 se holds zero. Runs compare only when scored on the same data by the same evaluator (equal floors).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from diffusion.evaluation.evaluators import MetricValue
from diffusion.evaluation.results import format_number, read_eval_json
from diffusion.evaluation.uncertainty import Difference, difference
from diffusion.runtime.checks import ConfigError

# Floors written for the same data and evaluator agree to float round-off (they come from one cache entry).
FLOOR_TOLERANCE = 1e-6


class RunComparison(NamedTuple):
    """One run against the baseline (the first ``run_dir``): a :class:`Difference` per shared metric."""

    baseline: Path
    run: Path
    differences: list[Difference]


def read_scores(run_dir: Path) -> dict[str, MetricValue]:
    """The scores of ``run_dir/eval.json``; ConfigError naming ``run_dir`` when the run was never scored."""
    path = Path(run_dir) / "eval.json"
    if not path.is_file():
        raise ConfigError(f"run_dir={run_dir} has no eval.json: score it first (python run.py task=evaluate "
                          f"run_dir={run_dir})")
    try:
        return read_eval_json(path)
    except ValueError as error:
        raise ConfigError(f"run_dir={run_dir}: eval.json is not readable JSON ({error})") from error


def check_comparable(baseline: Path, base: dict[str, MetricValue], run: Path, other: dict[str, MetricValue]) -> None:
    """ConfigError when the runs share no metric or a shared metric's floor differs (other data or evaluator)."""
    shared = [name for name in base if name in other]
    if not shared:
        raise ConfigError(f"run_dir: {baseline} and {run} share no score (evaluated by different evaluators?)")
    for name in shared:
        a, b = base[name].floor, other[name].floor
        if a is not None and b is not None and not math.isclose(a, b, rel_tol=FLOOR_TOLERANCE, abs_tol=1e-12):
            raise ConfigError(f"run_dir: {baseline} and {run} were scored against different real data or "
                              f"evaluators ({name} floor {a:.6g} vs {b:.6g}); compare runs of one data set and "
                              "evaluator")


def compare_runs(run_dirs: Sequence[str | Path]) -> list[RunComparison]:
    """Each run after the first against the first: the difference of every shared score, tie or not."""
    paths = [Path(p) for p in run_dirs]
    if len(paths) < 2:
        raise ConfigError(f"run_dir must list at least two evaluated runs, e.g. run_dir=[a,b], got {len(paths)}")
    base = read_scores(paths[0])
    comparisons = []
    for path in paths[1:]:
        other = read_scores(path)
        check_comparable(paths[0], base, path, other)
        differences = [difference(name, base[name].value, base[name].std_error, other[name].value,
                                  other[name].std_error) for name in base if name in other]
        comparisons.append(RunComparison(paths[0], path, differences))
    return comparisons


def format_comparison(comparisons: Sequence[RunComparison], scores: dict[Path, dict[str, MetricValue]]) -> str:
    """A markdown table per run: metric, baseline, run, difference with its 95% interval, and the verdict."""
    blocks = []
    for comparison in comparisons:
        lines = [f"{comparison.run} against {comparison.baseline}:", "",
                 "| metric | baseline | run | difference [95% interval] | verdict |", "|---|---|---|---|---|"]
        for d in comparison.differences:
            base, other = scores[comparison.baseline][d.metric], scores[comparison.run][d.metric]
            better = (d.interval.estimate > 0) == base.higher_is_better
            verdict = "tie" if d.tie else ("run better" if better else "baseline better")
            lines.append(f"| {d.metric} | {_with_error(base)} | {_with_error(other)} | "
                         f"{format_number(d.interval.estimate)} [{format_number(d.interval.low)}, "
                         f"{format_number(d.interval.high)}] | {verdict} |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _with_error(metric: MetricValue) -> str:
    error = "" if metric.std_error is None else f" ± {format_number(metric.std_error)}"
    return format_number(metric.value) + error


def compare(run_dirs: Sequence[str | Path]) -> str:
    """The body of ``task=compare``: the comparison table of ``run_dirs`` (printed by the caller)."""
    comparisons = compare_runs(run_dirs)
    scores = {Path(p): read_scores(Path(p)) for p in run_dirs}
    return format_comparison(comparisons, scores)

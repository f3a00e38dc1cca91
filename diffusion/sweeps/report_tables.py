"""The report's tables: jobs (or seed groups) ranked by the objective, as ``report.md`` and CSV cells."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from diffusion.evaluation.results import Rank, tie_ranks
from diffusion.runtime.checks import ConfigError
from diffusion.sweeps.job_results import BEST_VAL_LOSS, OBJECTIVE_PREFERENCE, STATUSES, JobResult
from diffusion.sweeps.seed_groups import SeedGroup


def choose_objective(jobs: Sequence[JobResult], requested: str | None = None) -> str:
    """``requested`` (best_val_loss or a metric some job has), else the first of :data:`OBJECTIVE_PREFERENCE` some
    job has, else best val loss.
    """
    present = {name for job in jobs for name in job.metrics}
    if requested:
        if requested != BEST_VAL_LOSS and requested not in present:
            choices = sorted(present | {BEST_VAL_LOSS})
            raise ConfigError(f"--objective must be one of {choices} (what the jobs logged), got {requested!r}")
        return requested
    return next((name for name in OBJECTIVE_PREFERENCE if name in present), BEST_VAL_LOSS)


def rank_jobs(jobs: Sequence[JobResult], objective: str) -> list[JobResult]:
    """Lowest objective first; jobs without a value (failed before it was computed) last, in job order."""
    def key(job: JobResult) -> tuple[bool, float]:
        value = job.value(objective)
        return (not math.isfinite(value), value if math.isfinite(value) else 0.0)

    return sorted(jobs, key=key)


def split_overrides(jobs: Sequence[JobResult]) -> list[str]:
    """The overrides every job shares (returned), and each job's others (set as ``varying``)."""
    common = [o for o in jobs[0].overrides if all(o in job.overrides for job in jobs)] if jobs else []
    for job in jobs:
        job.varying = [o for o in job.overrides if o not in common]
    return common


def table_rows(
    ranked: Sequence[JobResult], objective: str, all_overrides: bool = True
) -> tuple[list[str], list[list[str]]]:
    """Header and cells of ``report.csv`` (every override; each metric's standard error and ratio to the floor in
    columns of their own, and under ``evaluator.seeds`` its std and min over the sets) and ``report.md``
    (``all_overrides=False``: the overrides that differ between jobs, ``value ± se`` cells, or ``mean ± std, min``
    over seeds, and a ``metric / floor`` column with the 95% interval). Jobs whose objectives differ by less than
    their standard errors share a rank (``1=``, :func:`~diffusion.evaluation.results.tie_ranks`); the first job
    with a finite objective, not pruned, is marked best, or ``tie`` with those tied with it."""
    metric_names = sorted({name for job in ranked for name in job.metrics})
    ratio_names = [name for name in metric_names if any(name in job.ratios for job in ranked)]
    spread_names = [name for name in metric_names if any(name in job.spreads for job in ranked)]
    if all_overrides:
        extra = [f"{n}_{part}" for n in metric_names for part in ("se",)] + [
            f"{n}_{part}" for n in ratio_names for part in ("ratio", "ratio_low", "ratio_high")] + [
            f"{n}_{part}" for n in spread_names for part in ("std_over_seeds", "min_over_seeds")]
    else:
        extra = [f"{n} / floor" for n in ratio_names]
    header = ["rank", "best", "job", "status", "overrides", "epochs", "final_train_loss", "final_val_loss"]
    header += ["best_epoch", "best_val_loss", *metric_names, *extra, "wall_time_s"]
    ranks = tie_ranks([job.value(objective) for job in ranked], [job.errors.get(objective) for job in ranked])
    # A pruned job's value is from before it was stopped: never the best, even when it happens to be lowest.
    best = next((i for i, job in enumerate(ranked) if math.isfinite(job.value(objective)) and job.status != "pruned"),
                None)
    marks = best_marks(ranks, best, [job.status != "pruned" for job in ranked])
    names = (metric_names, ratio_names, spread_names)
    rows = [_row(ranks[index].label or str(index + 1), job, marks[index], names, all_overrides)
            for index, job in enumerate(ranked)]
    return header, rows


def best_marks(ranks: Sequence[Rank], best: int | None, eligible: Sequence[bool]) -> list[str]:
    """``best`` for the best row, or ``tie`` for it and every eligible row sharing its rank; else empty."""
    marks = [""] * len(ranks)
    if best is None:
        return marks
    if not ranks[best].tied:
        marks[best] = "best"
        return marks
    for index, rank in enumerate(ranks):
        if eligible[index] and rank.position == ranks[best].position:
            marks[index] = "tie"
    return marks


def _metric_cells(job: JobResult, names: tuple[Sequence[str], Sequence[str], Sequence[str]],
                  numeric: bool) -> list[str]:
    """``report.csv``: values, standard errors, ratios with interval ends, then std and min over seeds, as numbers;
    ``report.md``: ``value ± se`` or ``mean ± std, min m`` (and ``beats real data``), then ``1.3x [1.1, 1.5]``."""
    metric_names, ratio_names, spread_names = names
    if numeric:
        cells = [fmt(job.metrics.get(n, math.nan)) for n in metric_names]
        cells += [fmt(job.errors.get(n, math.nan)) for n in metric_names]
        cells += [fmt(x) for n in ratio_names for x in job.ratios.get(n, (math.nan,) * 3)]
        return cells + [fmt(x) for n in spread_names for x in job.spreads.get(n, (math.nan,) * 2)]
    cells = []
    for name in metric_names:
        cell = fmt(job.metrics.get(name, math.nan), ".4g")
        if name in job.spreads:
            std, minimum = job.spreads[name]
            cell += f" ± {fmt(std, '.2g')}, min {fmt(minimum, '.4g')}"
        elif math.isfinite(job.errors.get(name, math.nan)):
            cell += f" ± {fmt(job.errors[name], '.2g')}"
        if name in job.beats_floor:
            copies = job.beats_floor[name]
            cell += " beats real data" + (f" (near-copies {copies:.1%})" if math.isfinite(copies) else "")
        cells.append(cell)
    for name in ratio_names:
        ratio, low, high = job.ratios.get(name, (math.nan,) * 3)
        cells.append(f"{ratio:.3g}x [{low:.3g}, {high:.3g}]" if math.isfinite(ratio) else "")
    return cells


def _row(rank: str, job: JobResult, mark: str, names: tuple[Sequence[str], Sequence[str], Sequence[str]],
         all_overrides: bool) -> list[str]:
    return [
        rank,
        mark,
        job.job,
        job.status,
        " ".join(job.overrides if all_overrides else job.varying),
        str(job.epochs),
        fmt(job.final_train_loss),
        fmt(job.final_val_loss),
        "" if job.best_epoch is None else str(job.best_epoch),
        fmt(job.best_val_loss),
        *_metric_cells(job, names, numeric=all_overrides),
        fmt(job.wall_time_s, ".1f"),
    ]


def fmt(value: float, spec: str = ".6g") -> str:
    """NaN (never reached) is an empty cell."""
    return format(value, spec) if math.isfinite(value) else ""


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def group_rows(
    ranked: Sequence[SeedGroup], objective: str, common: Sequence[str], split: bool = False
) -> tuple[list[str], list[list[str]]]:
    """Header and cells of a row per seed group: ``mean ± std`` of each value over the seeds (``split``: separate
    ``_mean`` and ``_std`` columns, for ``report_seeds.csv``) and the objective's minimum over them. Groups whose
    mean objectives differ by less than their standard errors (std / sqrt(seeds)) share a rank (``1=``); the first
    group with a finite mean is best, or ``tie`` with those tied with it."""
    metric_names = sorted({name for group in ranked for job in group.jobs for name in job.metrics})
    values: list[tuple[str, Any]] = [
        ("epochs", lambda job: float(job.epochs)),
        ("final_train_loss", lambda job: job.final_train_loss),
        ("final_val_loss", lambda job: job.final_val_loss),
        ("best_val_loss", lambda job: job.best_val_loss),
        *((name, lambda job, name=name: job.metrics.get(name, math.nan)) for name in metric_names),
        ("wall_time_s", lambda job: job.wall_time_s),
    ]
    header = ["rank", "best", "jobs", "seeds", "status", "overrides"]
    header += [f"{name}_{part}" for name, _ in values for part in ("mean", "std")] if split else [n for n, _ in values]
    header.append(f"{objective}_min" if split else f"{objective} min")
    objectives = [group.mean_std(lambda job: job.value(objective)) for group in ranked]
    errors = [std / math.sqrt(group.seeds) if math.isfinite(std) else None
              for group, (_, std) in zip(ranked, objectives, strict=True)]
    ranks = tie_ranks([mean for mean, _ in objectives], errors)
    best = next((i for i, (mean, _) in enumerate(objectives) if math.isfinite(mean)), None)
    marks = best_marks(ranks, best, [True] * len(ranked))
    rows = []
    for index, group in enumerate(ranked):
        row = [ranks[index].label or str(index + 1), marks[index], ",".join(job.job for job in group.jobs),
               str(group.seeds), group.status(), " ".join(o for o in group.overrides if o not in common)]
        for _, value in values:
            mean, std = group.mean_std(value)
            spread = f" ± {fmt(std, '.3g')}" if math.isfinite(std) else ""
            row += [fmt(mean), fmt(std)] if split else [fmt(mean) + spread]
        finite = [v for v in (job.value(objective) for job in group.jobs) if math.isfinite(v)]
        row.append(fmt(min(finite)) if finite else "")
        rows.append(row)
    return header, rows


def write_markdown(
    path: Path, sweep_dir: Path, objective: str, common: Sequence[str], header: list[str], rows: list[list[str]],
    groups: Sequence[SeedGroup] = (),
) -> Path:
    if groups:
        counts = {s: sum(job.status == s for g in groups for job in g.jobs) for s in STATUSES}
        jobs, unit = sum(g.seeds for g in groups), f"{len(groups)} groups of jobs that differ only in `seed`"
        what = f"{unit}, each as mean ± std over its seeds"
    else:
        counts = {s: sum(r[3] == s for r in rows) for s in STATUSES}
        jobs, what = len(rows), ""
    lines = [
        f"# Sweep report: {sweep_dir}",
        "",
        f"{jobs} jobs ({', '.join(f'{n} {s}' for s, n in counts.items() if n)}){f' in {what}' if what else ''}, "
        f"sorted by `{objective}` (lower is better); the best {'group' if groups else 'job'} is marked **best**, "
        "or **tie** where another is within the standard error of their difference (same rank, `1=`).",
        "",
        f"Overrides of every job: `{' '.join(common)}`" if common else "No override is shared by every job.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in rows:
        cells = [f"**{c}**" if c in ("best", "tie") else c.replace("|", "\\|") for c in row]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "![validation loss](report_curves.png)", "", f"![{objective}](report_objective.png)", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path

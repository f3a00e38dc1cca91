"""The report's tables: jobs (or seed groups) ranked by the objective, as ``report.md`` and CSV cells."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
    columns of their own) and ``report.md`` (``all_overrides=False``: the overrides that differ between jobs,
    ``value ± se`` cells and a ``metric / floor`` column with the 95% interval); the first row with a finite
    objective, not pruned, is marked best."""
    metric_names = sorted({name for job in ranked for name in job.metrics})
    ratio_names = [name for name in metric_names if any(name in job.ratios for job in ranked)]
    if all_overrides:
        extra = [f"{n}_{part}" for n in metric_names for part in ("se",)] + [
            f"{n}_{part}" for n in ratio_names for part in ("ratio", "ratio_low", "ratio_high")]
    else:
        extra = [f"{n} / floor" for n in ratio_names]
    header = ["rank", "best", "job", "status", "overrides", "epochs", "final_train_loss", "final_val_loss"]
    header += ["best_epoch", "best_val_loss", *metric_names, *extra, "wall_time_s"]
    # A pruned job's value is from before it was stopped: never the best, even when it happens to be lowest.
    best = next((job for job in ranked if math.isfinite(job.value(objective)) and job.status != "pruned"), None)
    rows = [_row(rank, job, job is best, metric_names, ratio_names, all_overrides)
            for rank, job in enumerate(ranked, start=1)]
    return header, rows


def _metric_cells(job: JobResult, metric_names: Sequence[str], ratio_names: Sequence[str],
                  numeric: bool) -> list[str]:
    """``report.csv``: values, then standard errors, then ratios with interval ends, as numbers; ``report.md``:
    ``value ± se`` (and ``beats real data``), then ``1.3x [1.1, 1.5]``."""
    if numeric:
        cells = [fmt(job.metrics.get(n, math.nan)) for n in metric_names]
        cells += [fmt(job.errors.get(n, math.nan)) for n in metric_names]
        return cells + [fmt(x) for n in ratio_names for x in job.ratios.get(n, (math.nan,) * 3)]
    cells = []
    for name in metric_names:
        error = job.errors.get(name, math.nan)
        cell = fmt(job.metrics.get(name, math.nan), ".4g")
        cell += f" ± {fmt(error, '.2g')}" if math.isfinite(error) else ""
        if name in job.beats_floor:
            copies = job.beats_floor[name]
            cell += " beats real data" + (f" (near-copies {copies:.1%})" if math.isfinite(copies) else "")
        cells.append(cell)
    for name in ratio_names:
        ratio, low, high = job.ratios.get(name, (math.nan,) * 3)
        cells.append(f"{ratio:.3g}x [{low:.3g}, {high:.3g}]" if math.isfinite(ratio) else "")
    return cells


def _row(rank: int, job: JobResult, is_best: bool, metric_names: Sequence[str], ratio_names: Sequence[str],
         all_overrides: bool) -> list[str]:
    return [
        str(rank),
        "best" if is_best else "",
        job.job,
        job.status,
        " ".join(job.overrides if all_overrides else job.varying),
        str(job.epochs),
        fmt(job.final_train_loss),
        fmt(job.final_val_loss),
        "" if job.best_epoch is None else str(job.best_epoch),
        fmt(job.best_val_loss),
        *_metric_cells(job, metric_names, ratio_names, numeric=all_overrides),
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
    ``_mean`` and ``_std`` columns, for ``report_seeds.csv``); the first group with a finite mean is best."""
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
    best = next((g for g in ranked if math.isfinite(g.mean_std(lambda job: job.value(objective))[0])), None)
    rows = []
    for rank, group in enumerate(ranked, start=1):
        row = [str(rank), "best" if group is best else "", ",".join(job.job for job in group.jobs), str(group.seeds)]
        row += [group.status(), " ".join(o for o in group.overrides if o not in common)]
        for _, value in values:
            mean, std = group.mean_std(value)
            spread = f" ± {fmt(std, '.3g')}" if math.isfinite(std) else ""
            row += [fmt(mean), fmt(std)] if split else [fmt(mean) + spread]
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
        f"sorted by `{objective}` (lower is better); the best {'group' if groups else 'job'} is marked **best**.",
        "",
        f"Overrides of every job: `{' '.join(common)}`" if common else "No override is shared by every job.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in rows:
        cells = [f"**{c}**" if c == "best" else c.replace("|", "\\|") for c in row]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "![validation loss](report_curves.png)", "", f"![{objective}](report_objective.png)", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path

"""Summarize a sweep: one row per job, sorted by the objective, with validation-loss curves.

    python -m diffusion.sweeps.report outputs/multirun/2024-05-01/12-00-00 [--objective fd]

writes ``report.md``, ``report.csv``, ``report_curves.png`` (validation loss of every job) and
``report_objective.png`` (the objective per job) into the sweep directory. Jobs that differ only in ``seed`` form
one row of ``report.md`` (mean ± std over the seeds, and their number; also in ``report_seeds.csv``) and one
mean curve with a ±std band; ``report.csv`` keeps a row per job. A job an Optuna search pruned is ``pruned``.
It reads only the files each job
wrote (``overrides.yaml``, ``config.yaml``, ``metrics.jsonl``, ``eval.json``, ``checkpoints/``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from diffusion.loggers.naming import VAL_LOSS
from diffusion.sweeps.seed_groups import SeedGroup, group_by_seed, rank_groups
from diffusion.runtime.checks import EXIT_USER_ERROR, ConfigError

RUN_FILES = ("config.yaml", "overrides.yaml", "metrics.jsonl", "train.log")
FAILED_MARKERS = ("error.txt", "FAILED")  # a job that wrote one of these failed, whatever else it left
PRUNED_MARKER = "pruned.json"  # written by diffusion.sweeps.pruning when the search stopped the job early
STATUSES = ("completed", "pruned", "running", "failed")
RUNNING_WINDOW_S = 600.0  # an unfinished job whose logs changed this recently is still running
OBJECTIVE_PREFERENCE = ("fd", "fid")  # evaluation metrics that, when present, rank jobs before val loss
BEST_VAL_LOSS = "best_val_loss"
_BOOKKEEPING = ("hydra", "optuna_trial.")
LOG_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\]")


@dataclass
class JobResult:
    """What one job of a sweep reached. Losses are NaN when the job logged no epoch."""

    job: str
    overrides: list[str]
    status: str  # completed | pruned | failed | running
    epochs: int = 0
    final_train_loss: float = math.nan
    final_val_loss: float = math.nan
    best_epoch: int | None = None
    best_val_loss: float = math.nan
    metrics: dict[str, float] = field(default_factory=dict)  # eval.json values
    wall_time_s: float = math.nan
    val_curve: list[float] = field(default_factory=list)
    varying: list[str] = field(default_factory=list)  # overrides not shared by every job of the sweep

    def value(self, objective: str) -> float:
        return self.best_val_loss if objective == BEST_VAL_LOSS else self.metrics.get(objective, math.nan)


# ----------------------------------------------------------------------------------------------------
# Reading a sweep
# ----------------------------------------------------------------------------------------------------
def find_jobs(sweep_dir: Path) -> list[Path]:
    """The job directories of a sweep, in job-number order.

    Raises:
        ConfigError: not a directory, a single run directory, or no job directories inside.
    """
    if not sweep_dir.is_dir():
        raise ConfigError(f"sweep dir {sweep_dir} does not exist or is not a directory")
    if _is_run_dir(sweep_dir):
        raise ConfigError(
            f"{sweep_dir} is a single run directory; diffusion.sweeps.report expects a sweep directory "
            "(outputs/multirun/<date>/<time>) that holds one directory per job"
        )
    jobs = [p for p in sweep_dir.iterdir() if _is_run_dir(p)]
    if jobs:
        return sorted(jobs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))
    sweeps = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir() and any(map(_is_run_dir, p.iterdir())))
    if sweeps:
        raise ConfigError(f"{sweep_dir} holds sweeps, not jobs; pass one of them: {', '.join(sweeps)}")
    raise ConfigError(f"{sweep_dir} holds no job directories (with config.yaml or metrics.jsonl); is it a sweep?")


def _is_run_dir(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in RUN_FILES)


def read_job(job_dir: Path, now: float | None = None) -> JobResult:
    epochs, times = epoch_records(job_dir)
    result = JobResult(job=job_dir.name, overrides=read_overrides(job_dir), status="running")
    if epochs:
        last = epochs[max(epochs)]
        result.epochs = max(epochs)
        result.final_train_loss = _as_float(last.get("train/loss"))
        result.final_val_loss = _as_float(last.get(VAL_LOSS))
        result.val_curve = [_as_float(epochs[e].get(VAL_LOSS)) for e in sorted(epochs)]
        finite = {e: float(r[VAL_LOSS]) for e, r in epochs.items() if _is_number(r.get(VAL_LOSS))}
        if finite:
            result.best_epoch = min(finite, key=finite.__getitem__)
            result.best_val_loss = finite[result.best_epoch]
    result.metrics = read_eval(job_dir)
    result.wall_time_s = wall_time(times) if times else log_wall_time(job_dir / "train.log")
    result.status = job_status(job_dir, result.epochs, now)
    return result


def epoch_records(job_dir: Path) -> tuple[dict[int, dict[str, Any]], list[float]]:
    """Per-epoch records of ``metrics.jsonl`` by epoch number (a resumed run's repeated epochs: the later record
    wins) and the elapsed-time field of every record."""
    rows = read_metrics_jsonl(job_dir / "metrics.jsonl")
    epochs = {int(r["epoch"]): r for r in rows if _is_number(r.get("epoch")) and VAL_LOSS in r}
    return epochs, [float(r["time"]) for r in rows if _is_number(r.get("time"))]


def read_metrics_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a killed job
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_overrides(job_dir: Path) -> list[str]:
    path = job_dir / "overrides.yaml"
    loaded = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    # hydra.* and the sweeper's ++optuna_trial.* (trial number, storage) say how the job ran, not what it ran.
    if not isinstance(loaded, list):
        return []
    return [str(o) for o in loaded if not str(o).lstrip("+").startswith(_BOOKKEEPING)]


def read_eval(job_dir: Path) -> dict[str, float]:
    """The metric values of ``eval.json`` (``{metric: {"value": v, "floor": f, ...}}``); its other top-level keys
    (``num_samples``, ``sampler``, ``steps``, ...) describe the evaluation and are left out."""
    path = job_dir / "eval.json"
    try:
        loaded = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}
    entries = loaded.items() if isinstance(loaded, dict) else ()
    return {
        str(name): float(entry["value"])
        for name, entry in entries
        if isinstance(entry, dict) and _is_number(entry.get("value"))
    }


def wall_time(times: Sequence[float]) -> float:
    """Seconds spent across sessions: the elapsed-time field restarts at each resume, so sum each run's maximum."""
    total, session_max, previous = 0.0, 0.0, -math.inf
    for t in times:
        if t < previous:
            total += session_max
            session_max = 0.0
        session_max, previous = max(session_max, t), t
    return total + session_max


def log_wall_time(path: Path) -> float:
    """From the first to the last timestamp of ``train.log`` (NaN without one)."""
    if not path.is_file():
        return math.nan
    stamps = [m.group(1) for m in map(LOG_TIME.match, path.read_text(encoding="utf-8").splitlines()) if m]
    if not stamps:
        return math.nan
    first, last = (datetime.strptime(s, "%Y-%m-%d %H:%M:%S") for s in (stamps[0], stamps[-1]))
    return (last - first).total_seconds()


def job_status(job_dir: Path, epochs_done: int, now: float | None = None) -> str:
    """``pruned`` when an Optuna search stopped it early, ``failed`` when the job wrote an error marker or stopped
    before finishing, ``running`` when unfinished but its logs changed in the last :data:`RUNNING_WINDOW_S`, else
    ``completed`` (last checkpoint present and, when the config says how many, all epochs done)."""
    if (job_dir / PRUNED_MARKER).exists():
        return "pruned"
    if any((job_dir / marker).exists() for marker in FAILED_MARKERS):
        return "failed"
    planned = planned_epochs(job_dir)
    finished = (job_dir / "checkpoints" / "last.pt").is_file() and (planned is None or epochs_done >= planned)
    if finished:
        return "completed"
    logs = [job_dir / name for name in ("metrics.jsonl", "train.log") if (job_dir / name).is_file()]
    latest = max((p.stat().st_mtime for p in logs), default=-math.inf)
    return "running" if (now if now is not None else time.time()) - latest < RUNNING_WINDOW_S else "failed"


def planned_epochs(job_dir: Path) -> int | None:
    path = job_dir / "config.yaml"
    config = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    epochs = config.get("trainer", {}).get("epochs") if isinstance(config, dict) else None
    return epochs if isinstance(epochs, int) else None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _as_float(value: Any) -> float:
    """A logged number as float; anything else (missing, null, a string) as NaN."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


# ----------------------------------------------------------------------------------------------------
# Ranking and writing
# ----------------------------------------------------------------------------------------------------
def choose_objective(jobs: Sequence[JobResult], requested: str | None = None) -> str:
    """``requested`` if given, else the first of :data:`OBJECTIVE_PREFERENCE` some job has, else best val loss.

    Raises:
        ConfigError: ``requested`` is neither ``best_val_loss`` nor an evaluation metric of any job.
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
    """Header and cells of ``report.csv`` (every override) and ``report.md`` (``all_overrides=False``: the
    overrides that differ between jobs); the first row with a finite objective, not pruned, is marked best."""
    metric_names = sorted({name for job in ranked for name in job.metrics})
    header = ["rank", "best", "job", "status", "overrides", "epochs", "final_train_loss", "final_val_loss"]
    header += ["best_epoch", "best_val_loss", *metric_names, "wall_time_s"]
    # A pruned job's value is from before it was stopped: never the best, even when it happens to be lowest.
    best = next((job for job in ranked if math.isfinite(job.value(objective)) and job.status != "pruned"), None)
    rows = [_row(rank, job, job is best, metric_names, all_overrides) for rank, job in enumerate(ranked, start=1)]
    return header, rows


def _row(rank: int, job: JobResult, is_best: bool, metric_names: Sequence[str], all_overrides: bool) -> list[str]:
    return [
        str(rank),
        "best" if is_best else "",
        job.job,
        job.status,
        " ".join(job.overrides if all_overrides else job.varying),
        str(job.epochs),
        _fmt(job.final_train_loss),
        _fmt(job.final_val_loss),
        "" if job.best_epoch is None else str(job.best_epoch),
        _fmt(job.best_val_loss),
        *(_fmt(job.metrics.get(name, math.nan)) for name in metric_names),
        _fmt(job.wall_time_s, ".1f"),
    ]


def _fmt(value: float, spec: str = ".6g") -> str:
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
            spread = f" ± {_fmt(std, '.3g')}" if math.isfinite(std) else ""
            row += [_fmt(mean), _fmt(std)] if split else [_fmt(mean) + spread]
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


def plot_val_curves(jobs: Sequence[JobResult], path: Path, groups: Sequence[SeedGroup] = ()) -> Path:
    """A validation-loss curve per job; with seed ``groups``, per group the mean over its seeds and a ±std band."""
    figure = Figure(figsize=(6, 4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for group in groups:
        mean, std = group.mean_curve()
        if mean:
            epochs = range(1, len(mean) + 1)
            label = f"{_label(group.jobs[0], ' '.join(group.overrides) or group.jobs[0].job)} ({group.seeds} seeds)"
            (line,) = axes.plot(epochs, mean, marker=".", label=label)
            low, high = [m - d for m, d in zip(mean, std)], [m + d for m, d in zip(mean, std)]
            axes.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    for job in () if groups else jobs:
        if job.val_curve:
            axes.plot(range(1, len(job.val_curve) + 1), job.val_curve, marker=".", label=_label(job))
    axes.set_xlabel("epoch")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel("validation loss")
    if any(job.val_curve for job in jobs):
        axes.legend(fontsize="small")
    figure.savefig(path, dpi=100)
    return path


def plot_objective(ranked: Sequence[JobResult], objective: str, path: Path) -> Path:
    """One bar per job that reached the objective, best on top and highlighted."""
    scored = [job for job in ranked if math.isfinite(job.value(objective))]
    figure = Figure(figsize=(6, 0.4 * len(scored) + 1.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    values = [job.value(objective) for job in scored]
    colors = ["tab:orange" if i == 0 else "tab:blue" for i in range(len(scored))]
    bars = axes.barh([_label(job) for job in scored], values, color=colors)
    axes.bar_label(bars, labels=[_fmt(v, ".4g") for v in values], padding=2, fontsize="small")
    axes.invert_yaxis()
    axes.set_xlabel(f"{objective} (lower is better)")
    figure.savefig(path, dpi=100)
    return path


def _label(job: JobResult, text: str | None = None) -> str:
    if text is None:
        text = f"{job.job}: {' '.join(job.varying)}" if job.varying else job.job
    return text if len(text) <= 60 else text[:57] + "..."


def write_report(sweep_dir: str | Path, objective: str | None = None, now: float | None = None) -> list[Path]:
    """Write the report files into ``sweep_dir``; returns their paths.

    Raises:
        ConfigError: ``sweep_dir`` is not a sweep directory.
    """
    sweep = Path(sweep_dir)
    jobs = [read_job(job_dir, now) for job_dir in find_jobs(sweep)]
    chosen = choose_objective(jobs, objective)
    ranked = rank_jobs(jobs, chosen)
    common = split_overrides(jobs)
    groups = group_by_seed(jobs)
    if all(group.seeds == 1 for group in groups):
        return [
            write_markdown(
                sweep / "report.md", sweep, chosen, common, *table_rows(ranked, chosen, all_overrides=False)
            ),
            write_csv(sweep / "report.csv", *table_rows(ranked, chosen)),
            plot_val_curves(jobs, sweep / "report_curves.png"),
            plot_objective(ranked, chosen, sweep / "report_objective.png"),
        ]
    ranked_groups = rank_groups(groups, lambda job: job.value(chosen))
    markdown_cells = group_rows(ranked_groups, chosen, common)
    return [
        write_markdown(sweep / "report.md", sweep, chosen, common, *markdown_cells, groups=ranked_groups),
        write_csv(sweep / "report.csv", *table_rows(ranked, chosen)),
        write_csv(sweep / "report_seeds.csv", *group_rows(ranked_groups, chosen, common, split=True)),
        plot_val_curves(jobs, sweep / "report_curves.png", ranked_groups),
        plot_objective(ranked, chosen, sweep / "report_objective.png"),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffusion.sweeps.report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="a multirun directory: outputs/multirun/<date>/<time>")
    parser.add_argument(
        "--objective", default=None, help="metric to sort by (default: fd or fid if a job has it, else best_val_loss)"
    )
    args = parser.parse_args(argv)
    try:
        written = write_report(args.sweep_dir, args.objective)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

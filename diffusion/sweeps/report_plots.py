"""The report's plots: validation loss per job (or seed group, mean and ±std band) and the objective per job."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from diffusion.sweeps.job_results import JobResult
from diffusion.sweeps.report_tables import fmt
from diffusion.sweeps.seed_groups import SeedGroup


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
    axes.bar_label(bars, labels=[fmt(v, ".4g") for v in values], padding=2, fontsize="small")
    axes.invert_yaxis()
    axes.set_xlabel(f"{objective} (lower is better)")
    figure.savefig(path, dpi=100)
    return path


def _label(job: JobResult, text: str | None = None) -> str:
    if text is None:
        text = f"{job.job}: {' '.join(job.varying)}" if job.varying else job.job
    return text if len(text) <= 60 else text[:57] + "..."

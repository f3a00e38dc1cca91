"""What the studies in ``experiments/studies/`` share: the budgets, running ``run.py`` (single runs and ``-m``
sweeps) with ``--reuse``, and the pieces of a report (header, caveats, figures). Launching, reading ``eval.json``,
formatting and the machine line come from :mod:`experiments.lib`.

Every study is one command, run from the repository root::

    python -m experiments.studies.<study> [--budget small|full] [--quick] [--out experiments/studies/<study>]
        [--threads 1] [--work-dir DIR] [--reuse]

It launches ``run.py`` exactly as a user would (each command is printed and written into the report), keeps the
runs under ``outputs/studies/<study>-<time>/`` (git-ignored) and writes ``report.md`` and PNG figures into
``--out`` (``--quick``: into the work directory, so the committed reports stay as they are).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from diffusion.sweeps.report import JobResult, find_jobs, read_job
from experiments.lib import QUICK_MODEL, QUICK_NUM_TIMESTEPS, QUICK_SAMPLES, ROOT, Score, add_common_flags, \
    describe_machine, run_py, set_threads, shown_command, shown_path, work_dir, write_results


# ----------------------------------------------------------------------------------------------------
# Budgets
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Budget:
    """How much each training run of a study gets, and how its samples are scored.

    ``eval_steps`` is the DDIM step count of the end-of-training scoring (None: DDPM through all T steps, the
    default run's sampler). Training itself never depends on the sampler: the DDPM loss is the same for both.
    """

    name: str
    epochs: int
    num_samples: int  # evaluator.num_samples; the digits evaluator scores in chunks of min(this, 180)
    eval_steps: int | None
    n_trials: int  # Optuna trials
    model: tuple[str, ...] = ()  # overrides of the default U-Net and its training (--quick shrinks them)
    num_timesteps: int = 1000
    model_text: str = "the default U-Net (0.9M parameters, T = 1000)"

    @property
    def flag(self) -> str:
        """The command-line option that selects this budget."""
        return "--quick" if self.name == "quick" else f"--budget {self.name}"

    def train_overrides(self) -> list[str]:
        overrides = [*self.model, f"trainer.epochs={self.epochs}", f"evaluator.num_samples={self.num_samples}",
                     "trainer.progress=false"]
        if self.eval_steps is not None:
            overrides += ["method=ddim", f"sampler.steps={self.eval_steps}"]
        return overrides

    def sampler_note(self) -> str:
        """How the study's training runs are scored, and the caveat that goes with it."""
        if self.eval_steps is None:
            return f"Samples are drawn with DDPM through all {self.num_timesteps} steps."
        return (f"Samples are drawn with DDIM-{self.eval_steps} (eta 0, x0 clipped to [-1, 1]); the sampling-steps "
                "study shows that deterministic DDIM's FD on a short-trained model depends on that clipping, so "
                "this ranking is one of (setting, sampler) pairs.")

    def describe(self) -> str:
        sampler = (f"DDPM, all {self.num_timesteps} steps" if self.eval_steps is None
                   else f"DDIM-{self.eval_steps} (eta 0, leading)")
        return (f"`{self.flag}`: {self.epochs} epochs of {self.model_text}, {self.num_samples} samples scored per "
                f"run with {sampler}")


BUDGETS = {
    # fits a busy 2-core CPU: each training run about a minute
    "small": Budget("small", epochs=15, num_samples=180, eval_steps=50, n_trials=4),
    # the default run's settings (python run.py); meant for a GPU
    "full": Budget("full", epochs=100, num_samples=500, eval_steps=None, n_trials=30),
}
# --quick: proves a study works in seconds; its numbers mean nothing
QUICK = Budget("quick", epochs=1, num_samples=QUICK_SAMPLES, eval_steps=5, n_trials=2, model=QUICK_MODEL,
               num_timesteps=QUICK_NUM_TIMESTEPS, model_text=f"a 37k-parameter U-Net (T = {QUICK_NUM_TIMESTEPS})")


def parse_args(description: str | None, study: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(parser, threads=1,
                     out_help=f"where report.md and the figures go (default: experiments/{study}; with --quick, "
                              "the work directory)")
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="small",
                        help="small: a busy 2-core CPU (default); full: the default run's settings, for a GPU")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where the runs go (default: outputs/studies/<study>-<time>/, git-ignored)")
    parser.add_argument("--reuse", action="store_true",
                        help="skip the runs already finished in --work-dir (rewrite the report without retraining)")
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------------------------------
# Launching run.py
# ----------------------------------------------------------------------------------------------------
@dataclass
class Study:
    """One study's bookkeeping: its work directory and every ``run.py`` command it ran, in order."""

    name: str
    budget: Budget
    out: Path
    work_dir: Path
    threads: int
    reuse: bool
    commands: list[str] = field(default_factory=list)
    ran_any: bool = False  # False when --reuse found every run finished
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def from_args(cls, name: str, args: argparse.Namespace) -> Study:
        """The study ``args`` ask for; sets this process's and every run's threads (``--threads``)."""
        set_threads(args.threads)
        work = (args.work_dir or work_dir("studies", name)).resolve()
        out = args.out or (work / "report" if args.quick else ROOT / "experiments" / "studies" / name)
        return cls(name, QUICK if args.quick else BUDGETS[args.budget], out, work, args.threads, args.reuse)

    def run(self, overrides: Sequence[str], name: str) -> Path:
        """``python run.py <overrides>`` into ``<work dir>/<name>``; returns that run directory."""
        directory = self.work_dir / name
        finished = self.reuse and (directory / "eval.json").is_file()
        self._launch([*overrides, f"hydra.run.dir={shown_path(directory)}"], directory.with_suffix(".log"), finished)
        return directory

    def sweep(self, overrides: Sequence[str], name: str) -> tuple[Path, list[JobResult]]:
        """``python run.py -m <overrides>`` into the sweep directory ``<work dir>/<name>``; returns it and every
        job's results (read by ``diffusion.sweeps.report``), in job order."""
        directory = self.work_dir / name
        finished = self.reuse and directory.is_dir() and all((j / "eval.json").is_file() for j in find_jobs(directory))
        self._launch(["-m", *overrides, f"hydra.sweep.dir={shown_path(directory)}"], directory.with_suffix(".log"),
                     finished)
        return directory, [read_job(job) for job in find_jobs(directory)]

    def _launch(self, arguments: list[str], log_path: Path, finished: bool = False) -> None:
        """Run ``run.py`` (:func:`experiments.lib.run_py`), or only record the command when ``finished``
        (``--reuse`` found its results)."""
        self.commands.append(shown_command(arguments))
        if finished:
            print(f"$ {shown_command(arguments)}  (reused)", flush=True)
            return
        self.ran_any = True
        run_py(arguments, log_path)

    def header(self, title: str, question: str) -> list[str]:
        """The report's opening: title, the question, when and where it was measured, how to reproduce it."""
        minutes = (time.perf_counter() - self.started) / 60
        threads = f"OMP_NUM_THREADS={self.threads} per run" if self.threads > 0 else "torch's default threads"
        record = self.work_dir / "study_minutes.txt"  # summed over sessions, so a --reuse report still states it
        if self.ran_any:
            earlier = float(record.read_text()) if record.is_file() else 0.0
            record.write_text(f"{earlier + minutes:.1f}\n")
        took = f"the whole study took {float(record.read_text()):.0f} min" if record.is_file() else ""
        return [
            f"# {title}", "", question, "",
            f"- **Measured**: {describe_machine().line()}",
            f"- **Budget**: {self.budget.describe()}; {threads}" + (f"; {took}" if took else ""),
            f"- **Reproduce**: `python -m experiments.studies.{self.name} {self.budget.flag}`",
            f"- **Runs**: `{shown_path(self.work_dir)}` (git-ignored; every run keeps its config.yaml, "
            "metrics.jsonl, samples and eval.json)", "",
        ]

    def commands_section(self) -> list[str]:
        return ["## Commands run", "", "```bash", *self.commands, "```", ""]

    def write(self, lines: Sequence[str]) -> Path:
        return write_results(self.out / "report.md", "\n".join(lines))


def override_value(job: JobResult, key: str) -> str:
    """The value a job's ``key=value`` command-line override gave (e.g. ``schedule`` -> ``cosine``)."""
    for override in job.overrides:
        name, _, value = override.partition("=")
        if name.lstrip("+~") == key:
            return value
    raise KeyError(f"job {job.job} has no override for {key!r} (overrides: {job.overrides})")


# ----------------------------------------------------------------------------------------------------
# Report pieces
# ----------------------------------------------------------------------------------------------------
def still_improving(jobs: Sequence[JobResult], epochs: int) -> list[str]:
    """A caveat when runs reached their best validation loss at their last epoch: the budget, not the setting,
    limits them, so the ranking holds for this budget only."""
    late = [job.job for job in jobs if job.best_epoch is not None and job.best_epoch >= epochs]
    if not late:
        return []
    share = "every run" if len(late) == len(jobs) else f"{len(late)} of {len(jobs)} runs"
    return [f"Validation loss was still falling at the last epoch ({epochs}) in {share}: the comparison is "
            "between under-trained models, and the ranking may change with longer training (`--budget full`).", ""]


def new_axes(width: float = 6.0, height: float = 4.0) -> tuple[Figure, Any]:
    """A figure with one axes, drawn by the Agg backend (no pyplot, no display)."""
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def save_fd_figure(figure: Figure, axes: Any, path: Path, floor: float | None, legend: dict[str, Any],
                   **settings: Any) -> Path:
    """Finish an FD plot and write it (PNG, 120 dpi) to ``path``: the real-data ``floor`` dashed (when known), the
    axes ``settings`` (scales, labels, title), a light grid and the legend (``legend``: its keyword arguments)."""
    if floor is not None:
        axes.axhline(floor, color="gray", linestyle="--", label=f"real-data floor {floor:.3g}")
    axes.set(**settings)
    axes.grid(alpha=0.3, which="both")
    axes.legend(**legend)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


def save_figure(figure: Figure, study: Study, name: str) -> str:
    """Write ``<out>/<name>`` (PNG, 120 dpi) and return the markdown that shows it."""
    study.out.mkdir(parents=True, exist_ok=True)
    figure.savefig(study.out / name, dpi=120)
    print(f"wrote {shown_path(study.out / name)}", flush=True)
    return f"![{Path(name).stem}]({name})"


def plot_val_curves(study: Study, jobs: Sequence[JobResult], labels: Sequence[str], name: str, title: str) -> str:
    """Validation loss (EMA weights, fixed t and noise) against epoch, one line per job."""
    figure, axes = new_axes()
    for job, label in zip(jobs, labels, strict=True):
        axes.plot(range(1, len(job.val_curve) + 1), job.val_curve, marker=".", label=label)
    axes.set(xlabel="epoch", ylabel="validation loss", yscale="log", title=title)
    axes.grid(alpha=0.3)
    axes.legend()
    return save_figure(figure, study, name)


def plot_scores(study: Study, labels: Sequence[str], scores: Sequence[Score | None], name: str, title: str,
                metric: str = "FD") -> str:
    """One bar per setting with its standard error, and the real-data floor as a dashed line."""
    figure, axes = new_axes(max(5.0, 0.9 * len(labels) + 2), 4.0)
    values = [s.value if s else math.nan for s in scores]
    known = any(s is not None and s.std_error is not None for s in scores)
    errors = [(s.std_error or 0.0) if s else 0.0 for s in scores] if known else None
    best = min(range(len(values)), key=lambda i: values[i] if math.isfinite(values[i]) else math.inf)
    colors = ["tab:green" if i == best else "tab:blue" for i in range(len(values))]
    bars = axes.bar(range(len(values)), values, yerr=errors, capsize=4, color=colors)
    axes.bar_label(bars, fmt="%.3g", fontsize=8)
    floors = [s.floor for s in scores if s and s.floor is not None]
    if floors:
        axes.axhline(floors[0], color="gray", linestyle="--", label=f"real-data floor {floors[0]:.3g}")
        axes.legend()
    axes.set_xticks(range(len(labels)), labels, rotation=20 if len(labels) > 3 else 0)
    axes.set(ylabel=f"{metric} (lower is better)", title=title)
    axes.grid(axis="y", alpha=0.3)
    return save_figure(figure, study, name)

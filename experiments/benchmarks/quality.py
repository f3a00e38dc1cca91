"""Sample quality against sampling cost on the default run, for DDPM, DDIM and DPM-Solver++.

Trains the default run (``python run.py``) unless ``--run-dir`` names one, then scores its best EMA checkpoint with
``task=evaluate`` once per sampling method, as a user would:

    DDPM          all 1000 steps                      (the default run's own sampler)
    DDIM          10, 20, 50, 100 steps, leading      (eta = 0, the default spacing)
    DPM-Solver++  10, 20 steps, trailing spacing      (the spacing its config recommends)

Every row draws the same number of samples (``evaluator.num_samples``, 500 by default) from the same seed and is
scored by the digits evaluator: FD and KID on the shipped classifier's features, each beside its real-data floor
at the same sample count, and the sampling wall time per sample. The targets (after Song et al. 2021,
Table 1): DDIM-50's FD within 25% of DDPM-1000's while at least 15x faster, and the default run's FD at most 4x its
real-data floor. Prints a markdown report (and writes it with ``--out``); exits 1 if a target is missed.

    python -m experiments.benchmarks.quality --threads 1 --out experiments/benchmarks/quality_cpu.md
    python -m experiments.benchmarks.quality --run-dir outputs/2024-05-01/12-00-00    # score an earlier run
    python -m experiments.benchmarks.quality --quick --out /tmp/quality.md    # toy run, seconds: proves it works

Runs go under ``outputs/benchmarks/`` (git-ignored) unless ``--work-dir`` says otherwise.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from experiments.lib import QUICK_RUN, QUICK_SAMPLES, Machine, SamplerRow, best_epoch, checks_report, \
    describe_machine, evaluate_checkpoint, finish_report, fmt, fmt_score, markdown_table, \
    parse_checkpoint_benchmark_args, reproduce_command, set_threads, shown_command, trained_run

FD_TOLERANCE = 1.25  # DDIM-50's FD may exceed DDPM-1000's by at most 25%
MIN_SPEEDUP = 15.0  # ... while sampling at least this many times faster
MAX_FLOOR_RATIO = 4.0  # the default run's FD at most this multiple of its real-data floor


@dataclass(frozen=True)
class Settings:
    """What is trained and which step counts are scored; ``--quick`` shrinks both."""

    train_overrides: tuple[str, ...]
    ddim_steps: tuple[int, ...]
    dpm_solver_steps: tuple[int, ...]
    compared_ddim_steps: int  # the DDIM row held against DDPM by the bars
    num_samples: int | None  # per row (None: evaluator.num_samples)


FULL = Settings((), ddim_steps=(10, 20, 50, 100), dpm_solver_steps=(10, 20), compared_ddim_steps=50, num_samples=None)
QUICK = Settings(QUICK_RUN, ddim_steps=(5, 10), dpm_solver_steps=(5,), compared_ddim_steps=10,
                 num_samples=QUICK_SAMPLES)


# ------------------------------------------------------------------------------------------- this benchmark


def steps_list(steps: Sequence[int]) -> str:
    return "[" + ",".join(str(s) for s in steps) + "]"


def score_default_run(run_dir: Path, work: Path, settings: Settings, num_samples: int | None) -> list[SamplerRow]:
    """DDPM through all T steps, DDIM and DPM-Solver++ at the settings' step counts on ``run_dir``'s checkpoint."""
    ddpm = evaluate_checkpoint(run_dir, work / "ddpm", "DDPM", ["method=ddpm"], "all", num_samples)
    # sampler.steps sets the (discarded) main pass; the rows come from evaluator.sampler_steps.
    ddim_steps, dpm_steps = settings.ddim_steps, settings.dpm_solver_steps
    ddim = evaluate_checkpoint(
        run_dir, work / "ddim", "DDIM",
        ["method=ddim", f"sampler.steps={ddim_steps[0]}", f"evaluator.sampler_steps={steps_list(ddim_steps)}"],
        num_samples=num_samples,
    )
    dpm = evaluate_checkpoint(
        run_dir, work / "dpm_solver", "DPM-Solver++(2M)",
        ["method=dpm_solver", "sampler.timestep_spacing=trailing", f"sampler.steps={dpm_steps[0]}",
         f"evaluator.sampler_steps={steps_list(dpm_steps)}"],
        spacing="trailing",
        num_samples=num_samples,
    )
    return ddpm + ddim + dpm


def rows_table(rows: Sequence[SamplerRow], reference: SamplerRow) -> list[str]:
    """Markdown: FD and KID (± standard error) with floors, FD / floor, seconds per sample and speed-up."""
    header = ["sampler", "steps", "spacing", "FD", "FD floor", "FD / floor", "KID", "KID floor", "ms / sample",
              f"speed-up vs {reference.label}-{reference.steps}"]
    cells = []
    for row in rows:
        fd, kid = row.scores.get("fd"), row.scores.get("kid")
        ratio = fd.value / fd.floor if fd is not None and fd.floor else None
        cells.append([
            row.label, str(row.steps), row.spacing, fmt_score(fd), fmt(fd.floor if fd else None), fmt(ratio, ".2f"),
            fmt_score(kid), fmt(kid.floor if kid else None), fmt(row.seconds_per_sample * 1e3, ".3g"),
            f"{reference.seconds_per_sample / row.seconds_per_sample:.1f}x",
        ])
    return markdown_table(header, cells)


def find_row(rows: Sequence[SamplerRow], label: str, steps: int | None = None) -> SamplerRow:
    """The first row of ``label`` (with ``steps`` when given)."""
    return next(row for row in rows if row.label == label and steps in (None, row.steps))


def verdicts(rows: Sequence[SamplerRow], compared_ddim_steps: int) -> list[tuple[bool, str]]:
    ddpm, ddim = find_row(rows, "DDPM"), find_row(rows, "DDIM", compared_ddim_steps)
    ddpm_name, ddim_name = f"DDPM-{ddpm.steps}", f"DDIM-{ddim.steps}"
    fd_ddpm, fd_ddim = ddpm.scores["fd"], ddim.scores["fd"]
    speedup = ddpm.seconds_per_sample / ddim.seconds_per_sample
    floor_ratio = fd_ddpm.value / fd_ddpm.floor
    change = fd_ddim.value / fd_ddpm.value - 1.0
    return [
        (fd_ddim.value <= FD_TOLERANCE * fd_ddpm.value,
         f"{ddim_name} FD within {FD_TOLERANCE - 1:.0%} of {ddpm_name}: {fd_ddim.value:.3g} vs {fd_ddpm.value:.3g} "
         f"({change:+.0%})"),
        (speedup >= MIN_SPEEDUP,
         f"{ddim_name} at least {MIN_SPEEDUP:.0f}x faster than {ddpm_name}: {speedup:.1f}x"),
        (floor_ratio <= MAX_FLOOR_RATIO,
         f"default run ({ddpm_name}) FD at most {MAX_FLOOR_RATIO:.0f}x its real-data floor: {floor_ratio:.2f}x "
         f"(FD {fd_ddpm.value:.3g}, floor {fd_ddpm.floor:.3g})"),
    ]


def report(rows: Sequence[SamplerRow], settings: Settings, run_dir: Path, trained: str, seconds: float,
           machine: Machine, command: str) -> tuple[str, bool]:
    run = f"`{shown_command(settings.train_overrides)}`" + ("" if settings.train_overrides else " (defaults)")
    precision = yaml.safe_load((run_dir / "config.yaml").read_text())["trainer"]["precision"]
    method = (
        f"Run: {run}, {trained}; scored: best EMA checkpoint (epoch {best_epoch(run_dir)}), "
        f"{rows[0].num_samples} samples per row from sampler seed 0, {precision} network. FD and KID on the shipped "
        "digit classifier's features against the training split, FD in chunks of 180 (= len(val)); floors: held-out "
        "real digits at the same sample count. ± is the standard error."
    )
    return checks_report("Sample quality against sampling cost: default run", machine, method,
                         rows_table(rows, find_row(rows, "DDPM")), verdicts(rows, settings.compared_ddim_steps),
                         seconds, command)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_checkpoint_benchmark_args(__doc__.split("\n\n")[0], "the default run", argv)
    set_threads(args.threads)
    settings = QUICK if args.quick else FULL
    start, machine = time.perf_counter(), describe_machine()
    run_dir, work, trained = trained_run(args, settings.train_overrides, "quality")
    rows = score_default_run(run_dir, work, settings, args.num_samples or settings.num_samples)
    text, passed = report(rows, settings, run_dir, trained, time.perf_counter() - start, machine,
                          reproduce_command("experiments.benchmarks.quality", argv))
    return finish_report(text, passed, args)


if __name__ == "__main__":
    sys.exit(main())

"""Few-step students distilled from a digits run, against their teacher sampled with DDIM.

Trains a v-prediction digits teacher (``python run.py method.prediction=v``) unless ``--run-dir`` names a run, then:

    teacher             task=evaluate method=ddim, trailing spacing, at 1, 2, 4 and 50 steps
    progressive         task=distill distill=progressive: 64 -> 32 -> ... -> 4 steps; FD per round (distill_rounds.json)
                        and the 4-step student's FD (its own final evaluation)
    consistency         task=distill distill=consistency, then task=evaluate at 1 and 2 steps

Reports FD (digits evaluator, with its real-data floor), ms per sample, the per-round FDs, and each run's training
seconds (the sum of its epochs' ``epoch_seconds``: start-up and final sampling excluded, per-round scoring
included), and their ratio to the teacher's. Checks: the 4-step progressive student within 1.5x
of the teacher's DDIM-50 FD, and better than the teacher's DDIM-4; the consistency student better than the
teacher's DDIM at 1 and at 2 steps.

    python -m experiments.benchmarks.distill --threads 1 --out experiments/benchmarks/distill_cpu.md
    python -m experiments.benchmarks.distill --budget small --run-dir <teacher run>   # 16 -> 4 steps, shorter
    python -m experiments.benchmarks.distill --run-dir outputs/2024-05-01/12-00-00    # an earlier v-prediction run
    python -m experiments.benchmarks.distill --quick --out /tmp/distill.md    # toy run, seconds: proves it works

Runs go under ``outputs/benchmarks/`` (git-ignored) unless ``--work-dir`` says otherwise.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from experiments.lib import (
    QUICK_RUN,
    QUICK_SAMPLES,
    Machine,
    SamplerRow,
    checks_report,
    describe_machine,
    evaluate_checkpoint,
    finish_report,
    fmt,
    fmt_score,
    markdown_table,
    parse_checkpoint_benchmark_args,
    reproduce_command,
    run_into,
    sampler_rows,
    set_threads,
    shown_command,
    shown_path,
    trained_run,
    training_seconds,
)

MAX_FD_RATIO = 1.5  # the 4-step progressive student's FD at most this multiple of the teacher's DDIM-50 FD


@dataclass(frozen=True)
class Settings:
    """What is trained and distilled; ``--quick`` shrinks everything."""

    train_overrides: tuple[str, ...]
    progressive: tuple[str, ...]
    consistency: tuple[str, ...]
    teacher_steps: int  # the teacher's many-step reference (DDIM-50)
    num_samples: int | None  # per row (None: evaluator.num_samples)


FULL = Settings(
    ("method.prediction=v",),
    ("distill.start_steps=64", "distill.end_steps=4", "distill.steps_per_round=1000"),
    ("distill.steps=3000",),
    teacher_steps=50, num_samples=None,
)
# For a CPU shared with other benchmarks (about 0.8 s per distillation step there): 16 -> 8 -> 4 steps with 600
# optimizer steps a round, and 1,000 consistency steps. Its figures are not checked against the targets.
SMALL = Settings(
    ("method.prediction=v",),
    ("distill.start_steps=16", "distill.end_steps=4", "distill.steps_per_round=600"),
    ("distill.steps=1000",),
    teacher_steps=50, num_samples=None,
)
QUICK = Settings(
    ("method.prediction=v", *QUICK_RUN),
    ("distill.start_steps=16", "distill.end_steps=4", "distill.steps_per_round=2", "trainer.batch_size=512"),
    ("distill.steps=2", "distill.num_scales=6", "trainer.batch_size=512"),
    teacher_steps=10, num_samples=QUICK_SAMPLES,
)
DISTILL_COMMON = ("trainer.progress=false",)


def distill(run_dir: Path, work: Path, name: str, overrides: Sequence[str], num_samples: int | None) -> Path:
    """``python run.py task=distill run_dir=<teacher> distill=<name> <overrides>`` into ``<work>/<name>``."""
    count = [] if num_samples is None else [f"evaluator.num_samples={num_samples}"]
    student = work / name
    run_into(["task=distill", f"run_dir={shown_path(run_dir)}", f"distill={name}", *DISTILL_COMMON, *overrides,
              *count], student)
    return student


def round_rows(student: Path) -> list[str]:
    """The progressive run's steps-vs-FD table."""
    rows = json.loads((student / "distill_rounds.json").read_text())
    return markdown_table(["round", "student steps", "optimizer steps", "FD"],
                          [[str(r["round"]), str(r["steps"]), str(r["global_step"]), fmt(r.get("fd"))] for r in rows])


def rows_table(rows: Sequence[SamplerRow]) -> list[str]:
    cells = []
    for row in rows:
        fd = row.scores.get("fd")
        cells.append([row.label, str(row.steps), fmt_score(fd), fmt(fd.floor if fd else None),
                      fmt(row.seconds_per_sample * 1e3, ".3g")])
    return markdown_table(["sampler", "steps", "FD", "FD floor", "ms / sample"], cells)


def fd(rows: Sequence[SamplerRow], label: str, steps: int) -> float:
    return next(r for r in rows if r.label == label and r.steps == steps).scores["fd"].value


def verdicts(rows: Sequence[SamplerRow], teacher_steps: int) -> list[tuple[bool, str]]:
    teacher_many, teacher_4 = fd(rows, "teacher DDIM", teacher_steps), fd(rows, "teacher DDIM", 4)
    progressive = fd(rows, "progressive", 4)
    checks = [
        (progressive <= MAX_FD_RATIO * teacher_many,
         f"4-step progressive student FD within {MAX_FD_RATIO:g}x of the teacher's DDIM-{teacher_steps}: "
         f"{progressive:.3g} vs {teacher_many:.3g}"),
        (progressive < teacher_4, f"4-step progressive student better than the teacher's DDIM-4: {progressive:.3g} vs "
                                  f"{teacher_4:.3g}"),
    ]
    for steps in (1, 2):
        student, teacher = fd(rows, "consistency", steps), fd(rows, "teacher DDIM", steps)
        checks.append((student < teacher, f"{steps}-step consistency student better than the teacher's DDIM-{steps}: "
                                          f"{student:.3g} vs {teacher:.3g}"))
    return checks


def report(rows: Sequence[SamplerRow], rounds: list[str], seconds: dict[str, float], settings: Settings,
           trained: str, elapsed: float, machine: Machine, command: str) -> tuple[str, bool]:
    method = (
        f"Teacher: `{shown_command(settings.train_overrides)}`, {trained}; its best EMA checkpoint sampled with "
        "deterministic DDIM on trailing timesteps. Students: `task=distill` with "
        f"`{' '.join(settings.progressive)}` (progressive) and `{' '.join(settings.consistency)}` (consistency), "
        f"each scored on {rows[0].num_samples} samples from sampler seed 0: FD on the digits evaluator's features "
        "against the training split, floor from held-out real digits at the same count; ± is the standard error. "
        "Training seconds, the sum of each run's epoch_seconds: teacher "
        f"{seconds['teacher']:.0f} s, progressive {seconds['progressive']:.0f} s "
        f"({seconds['progressive'] / seconds['teacher']:.2g}x the teacher's), consistency "
        f"{seconds['consistency']:.0f} s ({seconds['consistency'] / seconds['teacher']:.2g}x)."
    )
    table = [*rows_table(rows), "", "Progressive distillation, FD per round:", "", *rounds]
    return checks_report("Few-step generation by distillation on digits", machine, method, table,
                         verdicts(rows, settings.teacher_steps), elapsed, command)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_checkpoint_benchmark_args(__doc__.split("\n\n")[0], "a v-prediction digits run", argv,
                                           budgets=("full", "small"))
    set_threads(args.threads)
    settings = QUICK if args.quick else SMALL if args.budget == "small" else FULL
    start, machine = time.perf_counter(), describe_machine()
    run_dir, work, trained = trained_run(args, settings.train_overrides, "distill")
    num_samples = args.num_samples or settings.num_samples
    steps = sorted({1, 2, 4, settings.teacher_steps})
    teacher = evaluate_checkpoint(run_dir, work / "teacher_ddim", "teacher DDIM",
                                  ["method=ddim", "sampler.timestep_spacing=trailing",
                                   f"evaluator.sampler_steps=[{','.join(map(str, steps))}]"], "trailing", num_samples)
    progressive = distill(run_dir, work, "progressive", settings.progressive, num_samples)
    consistency = distill(run_dir, work, "consistency", settings.consistency, num_samples)
    consistency_rows = evaluate_checkpoint(consistency, work / "consistency_eval", "consistency",
                                           ["evaluator.sampler_steps=[1,2]"], "trailing", num_samples)
    rows = [*teacher, *sampler_rows(progressive, "progressive", "trailing"), *consistency_rows]
    seconds = {"teacher": training_seconds(run_dir), "progressive": training_seconds(progressive),
               "consistency": training_seconds(consistency)}
    text, passed = report(rows, round_rows(progressive), seconds, settings, trained, time.perf_counter() - start,
                          machine, reproduce_command("experiments.benchmarks.distill", argv))
    return finish_report(text, passed, args)


if __name__ == "__main__":
    sys.exit(main())

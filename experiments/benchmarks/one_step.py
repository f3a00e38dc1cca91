"""On digits: one- and two-step generators trained as such (MeanFlow, shortcut models, continuous-time consistency
sCT), tuned from an EDM run (ECT) or distilled from it (sCD), against the default DDPM run and the EDM teacher's
35-NFE Heun.

Trains at the default run's budget (its network, epochs and trainer) with ``python run.py``, as a user would:

    DDPM        the default run: its DDPM-1000 FD is the bars' reference
    EDM         method=edm: the teacher of ECT and sCD, scored with its Heun-18 (35 NFE)
    MeanFlow    experiment=digits_meanflow (average velocity by JVP, adaptive weighting), at the default budget and
                at twice it
    shortcut    method=shortcut (step-size conditioned flow, self-consistency), at both budgets
    sCT         method=scm (TrigFlow, JVP tangent, adaptive weighting), at both budgets
    ECT         task=tune run_dir=<EDM>: the EDM network tuned in 20% of the teacher's optimizer steps
    sCD         task=tune run_dir=<EDM> method=scm: a TrigFlow student of the EDM run's ODE, the teacher's steps

and scores each one-step run's best EMA checkpoint (kept by its 1-step FD every few epochs, ``trainer.monitor=fd``:
their loss does not rank checkpoints) at 1, 2 and 4 steps (consistency models: 1 and 2; ``task=evaluate
sampler.steps=k``) with 3
disjoint seed sets of 500 samples (``evaluator.seeds=[0,1,2]``; FD: mean and standard deviation over the sets),
with each run's training seconds (the sum of its ``epoch_seconds``) as a ratio to the DDPM run's, beside the
distillation benchmark's progressive and consistency students (distill_cpu.md, quoted). Bars: some
method's 1-step FD at most 2x the DDPM-1000 FD, some method's 2-step FD at most 1.5x it; ECT's 2-step FD at most
1.5x it with at most 20% of the teacher's optimizer steps.

    python -m experiments.benchmarks.one_step --threads 1 --out experiments/benchmarks/one_step_cpu.md
    python -m experiments.benchmarks.one_step --quick --out /tmp/one_step.md    # toy runs: proves it works

Runs go under ``outputs/benchmarks/`` (git-ignored) unless ``--work-dir`` says otherwise.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from diffusion.storage import checkpoint
from diffusion.storage.file_manager import load_checkpoint
from experiments.lib import (
    QUICK_RUN,
    QUICK_SAMPLES,
    checks_report,
    describe_machine,
    finish_report,
    fmt,
    markdown_table,
    parse_work_args,
    read_eval,
    reproduce_command,
    run_into,
    shown_command,
    shown_path,
    spread_score,
    training_seconds,
    work_dir,
)

REUSE = False  # --reuse
ONE_STEP_BAR, TWO_STEP_BAR = 2.0, 1.5  # multiples of the DDPM run's DDPM-1000 FD
ECT_STEP_SHARE = 0.2  # ECT's optimizer steps at most this share of its teacher's
TRAINED = ("MeanFlow", "MeanFlow, 2x budget", "shortcut", "shortcut, 2x budget", "sCT", "sCT, 2x budget")
SCORED_STEPS = (1, 2, 4)  # the consistency models (sCT, ECT, sCD) sample in 1 or 2 steps, as their papers do
# ECT's learning rate for a tuning this short (208 steps): 0.3x the teacher's, chosen by the sweep in the report
# (0.1 is the paper's, for tunings of many thousand steps); the loss weighting is tune.weighting's default, the
# paper's 1 / (t - r).
ECT_SETTINGS = ("tune.lr_scale=0.3",)
# experiments/benchmarks/distill_cpu.md (its teacher: the default run with v-prediction, 100 epochs): quoted, not
# re-run here; (student, steps, FD mean, std over 3 sets).
DISTILLED = (("progressive", 4, 3.58, 0.13), ("consistency", 1, 7.17, 0.28), ("consistency", 2, 5.35, 0.36))


@dataclass(frozen=True)
class Settings:
    train: tuple[str, ...]  # what every trained run shares (the default run's budget)
    tune: tuple[str, ...]  # what the task=tune runs take (their model and data are the teacher's)
    score: tuple[str, ...]  # every evaluation's count and seed sets
    double: tuple[str, ...]  # twice the budget
    select: tuple[str, ...]  # the one-step runs' checkpoint selection (their loss does not rank checkpoints)
    ect_select: tuple[str, ...]  # the same for ECT's short run
    ect_share: float
    ect: tuple[str, ...]  # ECT's own settings
    ddpm_steps: int


FULL = Settings(train=("evaluator.seeds=[0,1,2]",), tune=("evaluator.seeds=[0,1,2]",),
                score=("evaluator.num_samples=500", "evaluator.seeds=[0,1,2]"), double=("trainer.epochs=200",),
                select=("trainer.monitor=fd", "evaluator.every_n_epochs=10"),
                ect_select=("trainer.monitor=fd", "evaluator.every_n_epochs=4"), ect_share=0.2, ect=ECT_SETTINGS,
                ddpm_steps=1000)
QUICK = Settings(train=(*QUICK_RUN, "evaluator.seeds=[0,1,2]"),
                 tune=("trainer.batch_size=512", "trainer.precision=fp32", "trainer.progress=false",
                       f"evaluator.num_samples={QUICK_SAMPLES}", "evaluator.seeds=[0,1,2]"),
                 score=("evaluator.seeds=[0,1,2]",), double=("trainer.epochs=2",),
                 select=("trainer.monitor=fd", "evaluator.every_n_epochs=1"),
                 ect_select=("trainer.monitor=fd", "evaluator.every_n_epochs=1"), ect_share=0.5, ect=ECT_SETTINGS,
                 ddpm_steps=20)


class Row(NamedTuple):
    """One scored setting: FD as the mean and standard deviation over the seed sets."""

    run: str
    sampler: str
    steps: int
    nfe: int
    fd: float
    std: float
    floor: float | None
    train_ratio: float  # training seconds / the DDPM run's
    optimizer_steps: int


def row_of(run: str, sampler: str, payload: dict[str, Any], run_dir: Path, ddpm_seconds: float) -> Row:
    fd, std, floor = spread_score(payload)
    steps = checkpoint.global_step(load_checkpoint(run_dir / "checkpoints" / "last.pt"))
    return Row(run, sampler, payload["steps"], payload["nfe"], fd, std, floor, training_seconds(run_dir) / ddpm_seconds,
               steps)


def train(overrides: Sequence[str], run_dir: Path) -> Path:
    if not (REUSE and (run_dir / "eval.json").is_file()):
        run_into(overrides, run_dir)
    return run_dir


def evaluate(run_dir: Path, out: Path, steps: int, settings: Settings) -> dict[str, Any]:
    """``task=evaluate sampler.steps=<steps>`` of ``run_dir`` into ``out`` (``--reuse``: an earlier result there)."""
    if not (REUSE and (out / "eval.json").is_file()):
        run_into(["task=evaluate", f"run_dir={shown_path(run_dir)}", f"sampler.steps={steps}", *settings.score], out)
    return read_eval(out)


def train_runs(work: Path, settings: Settings) -> dict[str, Path]:
    """The DDPM and EDM runs, MeanFlow, shortcut and sCT at one and two budgets, and ECT and sCD from the EDM run."""
    runs = {"DDPM": train(settings.train, work / "ddpm"), "EDM": train(["method=edm", *settings.train], work / "edm")}
    for name, folder, overrides in (("MeanFlow", "meanflow", ["experiment=digits_meanflow"]),
                                    ("shortcut", "shortcut", ["method=shortcut"]), ("sCT", "sct", ["method=scm"])):
        trained = [*overrides, *settings.train, *settings.select]
        runs[name] = train(trained, work / folder)
        runs[f"{name}, 2x budget"] = train([*trained, *settings.double], work / f"{folder}_double")
    teacher = f"run_dir={shown_path(runs['EDM'])}"
    runs["ECT"] = train(["task=tune", teacher, f"tune.share={settings.ect_share}", *settings.ect, *settings.tune,
                         *settings.ect_select], work / "ect")
    runs["sCD"] = train(["task=tune", teacher, "method=scm", "tune.share=1.0", *settings.tune, *settings.select],
                        work / "scd")
    return runs


def score_rows(runs: dict[str, Path], work: Path, settings: Settings) -> list[Row]:
    """The DDPM and EDM runs' own final evaluations, then every one-step run at 1 and 2 steps."""
    ddpm_seconds = training_seconds(runs["DDPM"])
    rows = [row_of("DDPM", f"DDPM-{settings.ddpm_steps}", read_eval(runs["DDPM"]), runs["DDPM"], ddpm_seconds),
            row_of("EDM", "Heun-18", read_eval(runs["EDM"]), runs["EDM"], ddpm_seconds)]
    for name in (*TRAINED, "ECT", "sCD"):
        for steps in SCORED_STEPS if name.split(",")[0] in ("MeanFlow", "shortcut") else SCORED_STEPS[:2]:
            out = work / f"{runs[name].name}_{steps}_steps"
            rows.append(row_of(name, f"{name.split(',')[0]}-{steps}", evaluate(runs[name], out, steps, settings),
                               runs[name], ddpm_seconds))
    return rows


def table(rows: Sequence[Row]) -> list[str]:
    header = ["run", "sampler", "steps", "NFE", "FD (mean ± std of 3 sets)", "FD floor", "training s / DDPM's",
              "optimizer steps"]
    distilled = [[f"{name} student (distill_cpu.md)", name, str(steps), str(steps), f"{fd:.3g} ± {std:.2g}", "", "",
                  ""] for name, steps, fd, std in DISTILLED]
    return markdown_table(header, [*([r.run, r.sampler, str(r.steps), str(r.nfe), f"{fmt(r.fd)} ± {fmt(r.std, '.2g')}",
                                      fmt(r.floor), f"{r.train_ratio:.2f}", str(r.optimizer_steps)] for r in rows),
                                   *distilled])


def verdicts(rows: Sequence[Row]) -> list[tuple[bool, str]]:
    ddpm, teacher = rows[0], rows[1]
    one = min((r for r in rows[2:] if r.steps == 1), key=lambda r: r.fd)
    two = min((r for r in rows[2:] if r.steps == 2), key=lambda r: r.fd)
    ect = next(r for r in rows if r.run == "ECT" and r.steps == 2)
    share = ect.optimizer_steps / teacher.optimizer_steps
    return [
        (one.fd <= ONE_STEP_BAR * ddpm.fd,
         (f"best 1-step FD ({one.run}) at most {ONE_STEP_BAR:g}x {ddpm.sampler}'s: {one.fd:.3g} vs {ddpm.fd:.3g} "
          f"({one.fd / ddpm.fd:.2f}x)")),
        (two.fd <= TWO_STEP_BAR * ddpm.fd,
         (f"best 2-step FD ({two.run}) at most {TWO_STEP_BAR:g}x {ddpm.sampler}'s: {two.fd:.3g} vs {ddpm.fd:.3g} "
          f"({two.fd / ddpm.fd:.2f}x)")),
        (ect.fd <= TWO_STEP_BAR * ddpm.fd and share <= ECT_STEP_SHARE,
         (f"ECT's 2-step FD at most {TWO_STEP_BAR:g}x {ddpm.sampler}'s with at most {ECT_STEP_SHARE:.0%} of the "
          f"teacher's optimizer steps: {ect.fd:.3g} ({ect.fd / ddpm.fd:.2f}x) with {share:.0%}")),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_work_args(__doc__, argv)
    global REUSE
    REUSE = args.reuse
    settings = QUICK if args.quick else FULL
    start, machine = time.perf_counter(), describe_machine()
    work = (args.work_dir or work_dir("benchmarks", "one_step")).resolve()
    rows = score_rows(train_runs(work, settings), work, settings)
    method = (f"Runs: `{shown_command(settings.train)}` (DDPM), + `method=edm` (EDM), + `experiment=digits_meanflow` "
              "(MeanFlow), + `method=shortcut` (shortcut), + `method=scm` (sCT); each of the three also at twice the "
              f"budget (+ `{' '.join(settings.double)}`), `task=tune run_dir=<EDM> tune.share={settings.ect_share} "
              f"{' '.join(settings.ect)}` (ECT), `task=tune run_dir=<EDM> method=scm tune.share=1.0` (sCD); the "
              f"one-step runs keep their best checkpoint by 1-step FD (`{' '.join(settings.select)}`; ECT every "
              f"{settings.ect_select[-1].split('=')[-1]}), as their loss does not rank checkpoints. Scored: each run's "
              f"best EMA checkpoint, `{' '.join(settings.score)}` (disjoint sample sets of one stream); FD on the "
              "digit classifier's features, floors from held-out real digits; ± is the standard deviation over the "
              "sets. Training seconds: the sum of each run's epoch_seconds over the DDPM run's.")
    text, passed = checks_report("One- and two-step generators on digits: MeanFlow, shortcut, sCT, ECT and sCD",
                                 machine, method,
                                 table(rows), verdicts(rows), time.perf_counter() - start,
                                 reproduce_command("experiments.benchmarks.one_step", argv))
    return finish_report(text, passed, args)


if __name__ == "__main__":
    sys.exit(main())

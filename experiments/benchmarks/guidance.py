"""Classifier-free guidance and DPM-Solver++ on class-conditional digits.

Trains ``python run.py experiment=digits_guided`` (labels dropped 10% of the time) unless ``--run-dir`` names such
a run, then samples its best EMA checkpoint with ``task=evaluate``, one class-conditional grid per row
(``sampler.class_labels=all``: the same number of samples of every class), as a user would:

    DDPM-1000          w = 0 (unguided) and w = 3 (guided; the run's own final evaluation)
    DDIM-50            w = 0 and w = 3                  (eta = 0, leading spacing: the defaults)
    DPM-Solver++(2M)   10 steps, w = 3                  (trailing spacing, as its config recommends)

Each row reports the digits evaluator's FD and KID (with real-data floors) and the share of samples the shipped
digit classifier (``diffusion.evaluation.load_digit_classifier``) labels as the class they were asked for. The
targets: with w = 3 that share is at least 95% while the FD stays within 2x of the unguided (w = 0) FD;
DPM-Solver++ with 10 steps reaches an FD no worse than DDIM with 50 steps, on the same checkpoint and guidance.

    python -m experiments.benchmarks.guidance --threads 1 --out experiments/benchmarks/guidance_cpu.md
    python -m experiments.benchmarks.guidance --run-dir outputs/2024-05-01/12-00-00    # an earlier guided run
    python -m experiments.benchmarks.guidance --quick --out /tmp/guidance.md    # toy run, seconds: proves it works

Runs go under ``outputs/benchmarks/`` (git-ignored) unless ``--work-dir`` says otherwise.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from diffusion.evaluation import load_digit_classifier
from experiments.lib import QUICK_RUN, QUICK_SAMPLES, Machine, SamplerRow, best_epoch, checks_report, \
    describe_machine, evaluate_checkpoint, finish_report, fmt, fmt_score, markdown_table, \
    parse_checkpoint_benchmark_args, reproduce_command, sampler_rows, set_threads, shown_command, trained_run

GUIDANCE_SCALE = 3.0
MIN_ACCURACY = 0.95  # share of guided samples classified as their requested class
MAX_FD_RATIO = 2.0  # guided FD at most this multiple of the unguided FD
GRID = ["sampler.class_labels=all"]  # equal numbers of every class, as the experiment samples them


@dataclass(frozen=True)
class Settings:
    """What is trained and which step counts are scored; ``--quick`` shrinks both."""

    train_overrides: tuple[str, ...]
    ddim_steps: int
    dpm_solver_steps: int
    num_samples: int | None  # per row (None: evaluator.num_samples)


FULL = Settings(("experiment=digits_guided",), ddim_steps=50, dpm_solver_steps=10, num_samples=None)
QUICK = Settings(("experiment=digits_guided", *QUICK_RUN), ddim_steps=10, dpm_solver_steps=5,
                 num_samples=QUICK_SAMPLES)


class GuidedRow(NamedTuple):
    row: SamplerRow
    guidance_scale: float
    accuracy: float  # share of samples classified as their requested class
    worst_class_accuracy: float


@torch.inference_mode()
def class_accuracy(directory: Path) -> tuple[float, float]:
    """Overall and worst per-class share of ``samples.npz`` that the shipped classifier labels as requested."""
    with np.load(directory / "samples.npz") as arrays:
        samples, labels = torch.from_numpy(arrays["samples"]), torch.from_numpy(arrays["labels"])
    predicted = load_digit_classifier()(samples).argmax(dim=1)
    correct = (predicted == labels).double()
    per_class = [correct[labels == c].mean().item() for c in labels.unique()]
    return correct.mean().item(), min(per_class)


def guided(row: SamplerRow, scale: float) -> GuidedRow:
    return GuidedRow(row, scale, *class_accuracy(row.directory))


def score_guided_run(run_dir: Path, work: Path, settings: Settings, reuse_own_row: bool,
                     num_samples: int | None) -> list[GuidedRow]:
    w = GUIDANCE_SCALE
    ddpm = ["method=ddpm", *GRID]
    ddim = ["method=ddim", f"sampler.steps={settings.ddim_steps}", *GRID]
    dpm = ["method=dpm_solver", f"sampler.steps={settings.dpm_solver_steps}", "sampler.timestep_spacing=trailing",
           *GRID]

    def one(name: str, label: str, overrides: list[str], scale: float, spacing: str = "leading") -> GuidedRow:
        overrides = [*overrides, f"sampler.guidance_scale={scale}"]
        rows = evaluate_checkpoint(run_dir, work / name, label, overrides, spacing, num_samples)
        return guided(rows[0], scale)

    # A run trained by this script already scored DDPM at w = 3 with these very settings (same seed): the run's
    # final evaluation, in its own eval.json.
    own_row = sampler_rows(run_dir, "DDPM", "all")[0] if reuse_own_row else None
    ddpm_guided = guided(own_row, w) if own_row else one("ddpm_w3", "DDPM", ddpm, w, "all")
    return [
        one("ddpm_w0", "DDPM", ddpm, 0.0, "all"),
        ddpm_guided,
        one("ddim_w0", "DDIM", ddim, 0.0),
        one("ddim_w3", "DDIM", ddim, w),
        one("dpm_solver_w3", "DPM-Solver++(2M)", dpm, w, "trailing"),
    ]


def rows_table(rows: Sequence[GuidedRow]) -> list[str]:
    header = ["sampler", "steps", "spacing", "w", "class accuracy", "worst class", "FD", "FD floor", "KID",
              "KID floor", "ms / sample"]
    cells = []
    for g in rows:
        fd, kid = g.row.scores.get("fd"), g.row.scores.get("kid")
        cells.append([
            g.row.label, str(g.row.steps), g.row.spacing, f"{g.guidance_scale:g}", f"{g.accuracy:.1%}",
            f"{g.worst_class_accuracy:.0%}", fmt_score(fd), fmt(fd.floor if fd else None), fmt_score(kid),
            fmt(kid.floor if kid else None), fmt(g.row.seconds_per_sample * 1e3, ".3g"),
        ])
    return markdown_table(header, cells)


def find(rows: Sequence[GuidedRow], label: str, scale: float) -> GuidedRow:
    return next(g for g in rows if g.row.label == label and g.guidance_scale == scale)


def verdicts(rows: Sequence[GuidedRow]) -> list[tuple[bool, str]]:
    w = GUIDANCE_SCALE
    unguided, guided_ = find(rows, "DDPM", 0.0), find(rows, "DDPM", w)
    ddim, dpm = find(rows, "DDIM", w), find(rows, "DPM-Solver++(2M)", w)
    fd_ratio = guided_.row.scores["fd"].value / unguided.row.scores["fd"].value
    fd_ddim, fd_dpm = ddim.row.scores["fd"].value, dpm.row.scores["fd"].value
    return [
        (guided_.accuracy >= MIN_ACCURACY,
         f"guided (w = {w:g}, DDPM-{guided_.row.steps}) samples classified as requested at least {MIN_ACCURACY:.0%}: "
         f"{guided_.accuracy:.1%} (worst class {guided_.worst_class_accuracy:.0%})"),
        (fd_ratio <= MAX_FD_RATIO,
         f"guided FD within {MAX_FD_RATIO:g}x of unguided (w = 0), DDPM-{guided_.row.steps}: {fd_ratio:.2f}x "
         f"({guided_.row.scores['fd'].value:.3g} vs {unguided.row.scores['fd'].value:.3g})"),
        (fd_dpm <= fd_ddim,
         f"DPM-Solver++ {dpm.row.steps} steps FD no worse than DDIM {ddim.row.steps} steps (w = {w:g}): "
         f"{fd_dpm:.3g} vs {fd_ddim:.3g}"),
    ]


def report(rows: Sequence[GuidedRow], settings: Settings, run_dir: Path, trained: str, seconds: float,
           machine: Machine, command: str) -> tuple[str, bool]:
    method = (
        f"Run: `{shown_command(settings.train_overrides)}`, {trained}; scored: best EMA checkpoint (epoch "
        f"{best_epoch(run_dir)}), {rows[0].row.num_samples} samples per row (`sampler.class_labels=all`: equal "
        "numbers of each class) from sampler seed 0. Class accuracy: share of samples the shipped digit classifier "
        "labels as the requested class (worst class beside it). FD and KID on the classifier's features against "
        "the training split, floors from held-out real digits at the same sample count; ± is the standard error."
    )
    return checks_report("Classifier-free guidance and DPM-Solver++ on class-conditional digits", machine,
                         method, rows_table(rows), verdicts(rows), seconds, command)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_checkpoint_benchmark_args(__doc__.split("\n\n")[0], "a digits_guided run", argv)
    set_threads(args.threads)
    settings = QUICK if args.quick else FULL
    start, machine = time.perf_counter(), describe_machine()
    run_dir, work, trained = trained_run(args, settings.train_overrides, "guidance")
    reuse = args.run_dir is None and args.num_samples is None  # its own evaluation used the same count
    rows = score_guided_run(run_dir, work, settings, reuse, args.num_samples or settings.num_samples)
    text, passed = report(rows, settings, run_dir, trained, time.perf_counter() - start, machine,
                          reproduce_command("experiments.benchmarks.guidance", argv))
    return finish_report(text, passed, args)


if __name__ == "__main__":
    sys.exit(main())

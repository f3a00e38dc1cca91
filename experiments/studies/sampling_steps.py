"""Sampling steps: sample quality (FD) against the number of sampling steps for DDPM, DDIM (eta 0 and
1) and DPM-Solver++(2M), all on ONE trained checkpoint: the shape of the DDIM paper's Table 1 (Song et al. 2021),
on our digits.

Trains one run, then scores its best EMA checkpoint once per sampler with ``task=evaluate`` and
``evaluator.sampler_steps=[...]`` (the same weights and the same initial noise for every row):

    python run.py task=evaluate run_dir=<run> method=ddim sampler.eta=0 'evaluator.sampler_steps=[10,20,50,100,1000]'

    python -m experiments.studies.sampling_steps [--budget small|full] [--quick] [--out experiments/studies/sampling_steps]
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import yaml
from matplotlib.ticker import ScalarFormatter

from experiments.lib import Score, fmt, fmt_score, markdown_table, sampler_rows, shown_path
from experiments.studies.common import Study, new_axes, parse_args, save_figure

DDIM_STEPS = (10, 20, 50, 100, 1000)  # the DDIM paper's S
SOLVER_STEPS = (5, 10, 20, 50, 100)  # DPM-Solver++ is meant for 10-20 steps; 5 shows where it breaks
QUESTION = (
    "How much sample quality does each sampler keep as the number of steps drops? One model is trained once; "
    "its best EMA checkpoint is then sampled by DDPM (ancestral, always all T = 1000 steps), DDIM with eta = 0 "
    "(deterministic) and eta = 1 (DDPM-like noise on a strided sequence), both with the paper's leading spacing, "
    "and DPM-Solver++(2M) with trailing spacing. Every row starts from the same noise (sampler seed 0) and is "
    "scored by FD on the shipped digit classifier's features, beside the real-data floor. A fifth row repeats "
    "deterministic DDIM without clipping the predicted x0 to [-1, 1]."
)


class Sampler(NamedTuple):
    """One sampler of the table: its label, the ``task=evaluate`` overrides and the step counts it is scored at."""

    label: str
    key: str  # the evaluation's directory name
    overrides: tuple[str, ...]
    steps: tuple[int, ...]


SAMPLERS = (
    Sampler("DDPM", "ddpm", ("method=ddpm",), (1000,)),
    Sampler("DDIM, eta = 0", "ddim_eta0", ("method=ddim", "sampler.eta=0"), DDIM_STEPS),
    Sampler("DDIM, eta = 1", "ddim_eta1", ("method=ddim", "sampler.eta=1"), DDIM_STEPS),
    Sampler("DPM-Solver++ (trailing)", "dpm_solver", ("method=dpm_solver", "sampler.timestep_spacing=trailing"),
            SOLVER_STEPS),
)


# Not a sampler of the paper's table: deterministic DDIM on the same weights without clipping x0 to [-1, 1]. The
# library's DDIM step clips x0_hat and re-derives eps_hat from it; this row shows what clipping adds at each step
# count. (An earlier version kept the unclipped eps_hat; this study is where that made DDIM worse with more steps.)
UNCLIPPED = Sampler("DDIM, eta = 0, no x0 clipping", "ddim_eta0_noclip", ("method=ddim", "sampler.eta=0"), DDIM_STEPS)


class Point(NamedTuple):
    steps: int
    fd: Score
    kid: Score | None
    seconds_per_sample: float


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(__doc__, "sampling_steps", argv)
    study = Study.from_args("sampling_steps", args)
    run_dir = study.run(study.budget.train_overrides(), "train")
    curves = {s.label: evaluate(study, run_dir, s) for s in SAMPLERS}
    curves[UNCLIPPED.label] = evaluate(study, unclipped_copy(run_dir), UNCLIPPED)
    floor = next(p.fd.floor for points in curves.values() for p in points)

    lines = study.header("Sampling steps: FD against steps for DDPM, DDIM and DPM-Solver++", QUESTION)
    lines += [f"Checkpoint: `{shown_path(run_dir)}` (best EMA weights by validation loss), trained with the budget "
              "above; every number below comes from these same weights.", "", "## FD by sampler and steps", ""]
    lines += table1(curves, floor)
    lines += ["## Every row", ""]
    lines += [*markdown_table(
        ["sampler", "steps", "FD", "KID ± se", "ms / sample"],
        [[label, str(p.steps), fmt(p.fd.value), fmt_score(p.kid, ".2g"), fmt(p.seconds_per_sample * 1e3, ".2f")]
         for label, points in curves.items() for p in points]), ""]
    lines += findings(curves)
    lines += [plot_fd_vs_steps(study, curves, floor), "", plot_fd_vs_time(study, curves, floor), ""]
    lines += ["Times are wall seconds of sampling per sample on the machine above, under load; they rank the "
              "samplers but are not a clean benchmark.", ""]
    lines += study.commands_section()
    study.write(lines)
    return 0


def evaluate(study: Study, run_dir: Path, sampler: Sampler) -> list[Point]:
    """Score ``run_dir`` with ``sampler`` at each of its step counts (one ``task=evaluate``)."""
    overrides = ["task=evaluate", f"run_dir={shown_path(run_dir)}", *sampler.overrides,
                 f"evaluator.num_samples={study.budget.num_samples}"]
    steps = [s for s in sampler.steps if s <= study.budget.num_timesteps]  # --quick trains with T = 20
    if len(steps) > 1:
        # the sampler's own pass draws the grid; keep it at the cheapest step count, the list scores them all
        overrides += [f"sampler.steps={steps[0]}", f"evaluator.sampler_steps=[{','.join(map(str, steps))}]"]
    rows = sampler_rows(study.run(overrides, f"evaluate_{sampler.key}"), sampler.label)
    return [Point(r.steps, r.scores["fd"], r.scores.get("kid"), r.seconds_per_sample) for r in rows]


def unclipped_copy(run_dir: Path) -> Path:
    """``<run_dir>_noclip``: the run's checkpoints (linked) with ``method.clip_denoised: false`` in its config.

    ``task=evaluate`` rebuilds the method from the run's ``config.yaml`` (only the method class comes from the
    command line), so ``method.clip_denoised=false`` on the command line would not reach the sampler.
    """
    copy = run_dir.with_name(run_dir.name + "_noclip")
    copy.mkdir(exist_ok=True)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["method"]["clip_denoised"] = False
    (copy / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    if not (copy / "checkpoints").exists():
        (copy / "checkpoints").symlink_to((run_dir / "checkpoints").resolve(), target_is_directory=True)
    return copy


def table1(curves: dict[str, list[Point]], floor: float | None) -> list[str]:
    """Rows: samplers; columns: step counts; cells: FD (the layout of the DDIM paper's Table 1)."""
    columns = sorted({p.steps for points in curves.values() for p in points})
    rows = []
    for label, points in curves.items():
        by_steps = {p.steps: p.fd.value for p in points}
        best = min(by_steps.values())
        rows.append([label, *(_bold_if(by_steps.get(s), best) for s in columns)])
    return [*markdown_table(["sampler \\ steps", *map(str, columns)], rows), "",
            f"FD, lower is better (bold: the sampler's best); real-data floor {fmt(floor)}. DDPM always runs all "
            "1000 steps.", ""]


def _bold_if(value: float | None, best: float) -> str:
    if value is None:
        return "-"
    return f"**{fmt(value)}**" if value == best else fmt(value)


def findings(curves: dict[str, list[Point]]) -> list[str]:
    """FD of each sampler at 10, 20 and 50 steps relative to DDPM-1000: the paper's headline comparison."""
    reference = curves["DDPM"][0].fd.value
    lines = [f"Relative to DDPM with 1000 steps (FD {fmt(reference)}):", ""]
    for label, points in curves.items():
        if label == "DDPM":
            continue
        cells = [f"{p.steps} steps {p.fd.value / reference:.2f}x" for p in points if p.steps in (10, 20, 50)]
        lines.append(f"- {label}: " + ", ".join(cells))
    clipped, unclipped = curves["DDIM, eta = 0"], curves[UNCLIPPED.label]
    lines += ["", "x0 clipping and deterministic DDIM (FD / KID, clipped -> unclipped): " + ", ".join(
        f"{a.steps} steps {fmt(a.fd.value)} / {fmt(a.kid.value if a.kid else None, '.2g')} -> "
        f"{fmt(b.fd.value)} / {fmt(b.kid.value if b.kid else None, '.2g')}"
        for a, b in zip(clipped, unclipped, strict=True)) + ". `method.clip_denoised` (on for digits) clamps "
        "x0_hat to [-1, 1] and the DDIM step re-derives eps_hat from the clamped x0_hat, so the two stay one "
        "consistent point; the unclipped row shows what the clamp is worth at each step count on this checkpoint."]
    return [*lines, ""]


def plot_fd_vs_steps(study: Study, curves: dict[str, list[Point]], floor: float | None) -> str:
    return plot_fd_against(study, curves, floor, lambda p: p.steps, "sampling steps (network evaluations)",
                           "FD against sampling steps, one checkpoint", "fd_vs_steps.png")


def plot_fd_vs_time(study: Study, curves: dict[str, list[Point]], floor: float | None) -> str:
    return plot_fd_against(study, curves, floor, lambda p: p.seconds_per_sample * 1e3,
                           "sampling wall time per sample (ms)", "FD against sampling cost", "fd_vs_time.png")


def plot_fd_against(study: Study, curves: dict[str, list[Point]], floor: float | None,
                    x: Callable[[Point], float], xlabel: str, title: str, name: str) -> str:
    """FD (log) against ``x`` (log) of each point, one line per sampler (DDPM's single point as a star)."""
    figure, axes = new_axes(6.5, 4.2)
    for label, points in curves.items():
        single = len(points) == 1
        axes.plot([x(p) for p in points], [p.fd.value for p in points], marker="*" if single else "o",
                  markersize=11 if single else 5, label=label)
    if floor is not None and math.isfinite(floor):
        axes.axhline(floor, color="gray", linestyle="--", label=f"real-data floor {floor:.3g}")
    axes.set(xscale="log", yscale="log", xlabel=xlabel, ylabel="FD (lower is better)", title=title)
    axes.yaxis.set_major_formatter(ScalarFormatter())
    axes.yaxis.set_minor_formatter(ScalarFormatter())
    axes.grid(alpha=0.3, which="both")
    axes.legend(loc="lower left", fontsize=8)  # the curves sit well above the floor: the lower left stays empty
    return save_figure(figure, study, name)


if __name__ == "__main__":
    sys.exit(main())

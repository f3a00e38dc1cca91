"""REPA on MNIST: the pixel-space DiT preset trained with and without representation alignment, FD against steps.

Two ``python run.py experiment=mnist_dit`` runs (the preset's DiT as first measured: width 128, 3 blocks, lr 1e-3;
:data:`AS_MEASURED`) with the same budget and seed, one with ``method.repa.weight=0.5`` (the
paper's lambda; encoder: the shipped MNIST classifier, whose last conv map is 7 x 7 like the DiT's 49 tokens; block
1 of 3, a third of the depth (the paper: 8 of SiT-XL's 28); projector width 256). Each keeps an epoch checkpoint at
every quarter of the budget; each checkpoint's EMA weights are sampled with the preset's sampler (DPM-Solver++(2M),
20 steps, guidance 2) on 3 disjoint seed sets of ``evaluator.num_samples`` and scored by the MNIST evaluator's FD
(mean ± std over the sets), at equal optimizer steps for the two runs.

The bar (the issue's): the REPA run's FD at half the steps no worse than the plain run's at all of them; where it
does not hold at this scale the curves are the result, with the reason in the note.

    python -m experiments.benchmarks.repa --threads 1 --out experiments/benchmarks/repa_cpu.md
    python -m experiments.benchmarks.repa --quick --out /tmp/repa.md    # toy runs, seconds each: proves it works

Runs go under ``outputs/benchmarks/`` (git-ignored) unless ``--work-dir`` says otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra import compose, initialize_config_dir

from diffusion.app.build import build
from diffusion.evaluation.metric_value import MetricValue
from diffusion.storage import checkpoint
from diffusion.storage.file_manager import FileManager
from diffusion.tasks.sample_and_score import prepare_evaluator
from diffusion.tasks.seed_sets import seed_summary
from experiments.lib import ROOT, add_common_flags, add_work_flags, checks_report, describe_machine, figure_path, \
    finish_report, fmt, markdown_table, reproduce_command, set_threads, shown_path, train_into, training_seconds, \
    work_dir

REPA = ("method.repa.weight=0.5", "method.repa.encoder=mnist", "method.repa.depth=1", "method.repa.projector_dim=256")
SEEDS = (0, 1, 2)
HALF_BAR = 1.0  # the REPA run's FD at half the steps at most this multiple of the plain run's at all of them


@dataclass(frozen=True)
class Settings:
    train: tuple[str, ...]  # what both runs share, beside experiment=mnist_dit
    epochs: int  # the budget; a checkpoint every quarter of it
    num_samples: int  # per seed set


# experiment=mnist_dit's DiT as this benchmark measured it (repa_cpu.md): width 128, 3 blocks, lr 1e-3 for its then 25
# epochs. The preset has since become the backbone benchmark's width-72, 5-block DiT at lr 6e-3 for 80 epochs.
AS_MEASURED = ("model.hidden_size=128", "model.depth=3", "trainer.lr=1.0e-3")
FULL = Settings(("trainer.progress=false", *AS_MEASURED), epochs=24, num_samples=500)  # 25 epochs, in quarters
QUICK = Settings(("data.val_fraction=0.9", "model.depth=2", "model.hidden_size=32", "model.num_heads=2",
                  "trainer.batch_size=64",
                  "trainer.warmup_steps=5", "trainer.precision=fp32", "trainer.progress=false", "sampler.steps=5",
                  "method.repa.projector_dim=16", "evaluator.floor_draws=2", "evaluator.bootstrap=0",
                  "evaluator.neighbour_metrics=false", "evaluator.kid_subsets=2", "evaluator.reference_size=200"),
                 epochs=4, num_samples=20)
# The curve's scoring needs the FD of each seed set alone: no bootstrap errors, no neighbour metrics.
CURVE_SCORING = ("evaluator.bootstrap=0", "evaluator.neighbour_metrics=false")


@dataclass(frozen=True)
class CurvePoint:
    """One checkpoint of one run: its optimizer steps and FD over the seed sets."""

    epoch: int
    steps: int
    fd: MetricValue
    fd_std: float


def run_overrides(settings: Settings, repa: bool) -> list[str]:
    quarter = settings.epochs // 4
    return ["experiment=mnist_dit", f"trainer.epochs={settings.epochs}", f"checkpoint.save_every_n_epochs={quarter}",
            f"evaluator.num_samples={settings.num_samples}", *(REPA if repa else ()), *settings.train]


def train_runs(work: Path, settings: Settings, reuse: bool) -> dict[str, tuple[Path, float]]:
    """The plain and the REPA run and their wall seconds (``--reuse``: a finished run is kept, its training seconds
    summed from ``metrics.jsonl``; any other run found there is set aside)."""
    runs = {"plain": run_overrides(settings, repa=False), "repa": run_overrides(settings, repa=True)}
    done = {name: reuse and (work / name / "samples.npz").is_file() for name in runs}
    return {name: (work / name, training_seconds(work / name) if done[name] else train_into(overrides, work / name))
            for name, overrides in runs.items()}


def curve(run_dir: Path, settings: Settings, repa: bool) -> list[CurvePoint]:
    """FD of the EMA weights at each quarter's checkpoint (3 seed sets), sampled as the preset samples."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*run_overrides(settings, repa), *CURVE_SCORING])
    parts = build(cfg)
    prepare_evaluator(parts.evaluator, parts.data)
    sampler = parts.make_sampler(parts.model)
    points = []
    for epoch in quarter_epochs(settings.epochs):
        ckpt = sampler.load_checkpoint(FileManager(run_dir), run_dir / "checkpoints" / f"epoch_{epoch:04d}.pt")
        per_seed = [parts.evaluator.evaluate(sampler.sample(num_samples=settings.num_samples,
                                                            first_index=seed * settings.num_samples).samples)["fd"]
                    for seed in SEEDS]
        mean, std, _ = seed_summary(per_seed)
        points.append(CurvePoint(epoch, checkpoint.global_step(ckpt), mean, std))
        print(f"  {run_dir.name} epoch {epoch}: FD {mean.value:.4g} ± {std:.2g}", flush=True)
    return points


def quarter_epochs(epochs: int) -> list[int]:
    quarter = epochs // 4
    return [quarter, 2 * quarter, 3 * quarter, epochs]


def table(curves: dict[str, list[CurvePoint]]) -> list[str]:
    header = ["optimizer steps", "share of budget", "plain FD (mean ± std, 3 sets)", "REPA FD (mean ± std, 3 sets)",
              "REPA / plain"]
    rows = []
    for share, plain, repa in zip(("1/4", "1/2", "3/4", "all"), curves["plain"], curves["repa"], strict=True):
        assert plain.steps == repa.steps, "the runs must compare at equal optimizer steps"
        scores = [f"{fmt(p.fd.value, '.4g')} ± {fmt(p.fd_std, '.2g')}" for p in (plain, repa)]
        rows.append([str(plain.steps), share, *scores, fmt(repa.fd.value / plain.fd.value, ".2f")])
    return markdown_table(header, rows)


def plot(curves: dict[str, list[CurvePoint]], path: Path) -> Path:
    """FD against optimizer steps, one line per run, the std over seed sets as error bars, the floor dashed."""
    from experiments.studies.common import new_axes, save_fd_figure

    figure, axes = new_axes(6.0, 4.0)
    for name, label in (("plain", "DiT"), ("repa", "DiT + REPA (MNIST classifier)")):
        points = curves[name]
        axes.errorbar([p.steps for p in points], [p.fd.value for p in points], yerr=[p.fd_std for p in points],
                      marker="o", capsize=3, label=label)
    return save_fd_figure(figure, axes, path, curves["plain"][0].fd.floor, {"fontsize": 8}, yscale="log",
                          xlabel="optimizer steps", ylabel="FD (lower is better)",
                          title="MNIST DiT: FD against training steps, with and without REPA")


def verdict(curves: dict[str, list[CurvePoint]]) -> tuple[bool, str]:
    half, full = curves["repa"][1], curves["plain"][-1]
    passed = half.fd.value <= HALF_BAR * full.fd.value
    return passed, (f"REPA at half the steps ({half.steps}) no worse than the plain run at all of them ({full.steps}): "
                    f"FD {half.fd.value:.3g} vs {full.fd.value:.3g} ({half.fd.value / full.fd.value:.2f}x)")


def report(curves: dict[str, list[CurvePoint]], runs: dict[str, tuple[Path, float]], plot_path: Path,
           settings: Settings, seconds: float, argv: Sequence[str] | None) -> tuple[str, bool]:
    method = (
        f"Two `python run.py {' '.join(run_overrides(settings, False))}` runs, the second with `{' '.join(REPA)}`; "
        f"training took {runs['plain'][1] / 60:.1f} min (plain) and {runs['repa'][1] / 60:.1f} min (REPA) "
        f"(run.py's wall time, launch and final sampling included; with --reuse the sum of its epochs). Each "
        f"quarter's epoch checkpoint (EMA weights) is sampled with the preset's sampler on {len(SEEDS)} disjoint "
        f"seed sets of {settings.num_samples} and scored by the MNIST classifier's FD (mean ± std over the sets). "
        f"Plot: `{shown_path(plot_path)}`."
    )
    return checks_report("REPA on the MNIST DiT (CPU)", describe_machine(), method, table(curves), [verdict(curves)],
                         seconds, reproduce_command("experiments.benchmarks.repa", argv))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_flags(parser, "where the markdown report goes (default: print only)", threads=1)
    add_work_flags(parser)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    settings = QUICK if args.quick else FULL
    work = (args.work_dir or work_dir("benchmarks", "repa")).resolve()
    start = time.perf_counter()
    runs = train_runs(work, settings, args.reuse)
    curves = {name: curve(run_dir, settings, repa=name == "repa") for name, (run_dir, _) in runs.items()}
    out_plot = figure_path(args, work, "fd_vs_steps.png")
    plot_path = plot(curves, out_plot)
    text, passed = report(curves, runs, plot_path, settings, time.perf_counter() - start, argv)
    return finish_report(text, passed, args)


if __name__ == "__main__":
    sys.exit(main())

"""On MNIST: the latent recipe against the same DiT in pixel space, at the same budget and backbone size.

Runs the three commands of the MNIST latent recipe (docs/latents.md) with ``python run.py``, as a user would, and
beside them the same DiT trained on the pixels:

    autoencoder   task=train_autoencoder experiment=mnist_autoencoder: an own KL autoencoder, 28x28x1 -> 7x7x4;
                  its reconstructions' FD is the floor of any model in that latent space
    encode        task=encode data=mnist autoencoder=own: the training and validation splits as latent shards
    latent        experiment=mnist_latent: a class-conditional DiT (patch 1 on 7x7: 49 tokens, 3 blocks of width 128)
                  trained with flow matching on the latents, its samples decoded and scored as pixels
    pixel         the same preset on the 28x28 pixels with patch 4 (also 49 tokens): the same network, method,
                  optimizer, epochs, sampler and evaluator; only the space differs

Each DiT run scores its best EMA checkpoint at the end on 3 disjoint seed sets of 500 samples (FD by the MNIST
classifier: mean and standard deviation over the sets). Reported: training samples/s in each space (the median of
the epochs'), the encode cost and the training time it repays, every command's wall time. Bars: the latent DiT's FD
within 1.5x of the pixel DiT's (equal optimizer steps, which is no more wall time for the latent run: its network
is the same and its input smaller); the recipe's three commands together within 20 minutes.

    python -m experiments.benchmarks.latents --threads 1 --out experiments/benchmarks/latents_cpu.md
    python -m experiments.benchmarks.latents --quick --out /tmp/latents.md    # toy runs: proves it works

Runs go under ``outputs/benchmarks/`` (git-ignored) unless ``--work-dir`` says otherwise.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.lib import checks_report, describe_machine, epoch_records, finish_report, fmt, markdown_table, \
    parse_work_args, read_eval, reproduce_command, run_into, shown_path, spread_score, work_dir

FD_BAR = 1.5  # the latent DiT's FD at most this multiple of the pixel DiT's
RECIPE_MINUTES = 20.0  # the three commands together
PIXEL = ("data=mnist", "data.root=null", "data.image_size=28", "model.patch_size=4")  # on experiment=mnist_latent


@dataclass(frozen=True)
class Settings:
    autoencoder: tuple[str, ...]  # beside task=train_autoencoder experiment=mnist_autoencoder
    dit: tuple[str, ...]  # what the latent and the pixel run share, beside experiment=mnist_latent
    data: tuple[str, ...]  # the MNIST split settings every command shares


FULL = Settings(autoencoder=("trainer.progress=false",), dit=("trainer.progress=false", "evaluator.seeds=[0,1,2]"),
                data=())
TINY_SCORING = ("evaluator.num_samples=20", "evaluator.floor_draws=2", "evaluator.bootstrap=0",
                "evaluator.neighbour_metrics=false", "evaluator.kid_subsets=2", "evaluator.reference_size=200")
QUICK = Settings(autoencoder=("trainer.epochs=1", "trainer.progress=false", *TINY_SCORING),
                 dit=("trainer.epochs=1", "model.depth=1", "model.hidden_size=32", "model.num_heads=2",
                      "trainer.warmup_steps=2", "trainer.progress=false", "sampler.steps=2", "evaluator.seeds=[0,1,2]",
                      *TINY_SCORING),
                 data=("data.val_fraction=0.9",))


@dataclass(frozen=True)
class Step:
    """One command of the benchmark: its run directory and wall seconds (launch and final scoring included)."""

    name: str
    run_dir: Path
    seconds: float


def run_step(name: str, overrides: Sequence[str], work: Path, reuse: bool, done_file: str) -> Step:
    """``python run.py <overrides>`` into ``work / name`` (``--reuse``: a finished run is kept, with the wall time
    its first invocation recorded)."""
    run_dir, timing = work / name, work / f"{name}.seconds"
    if reuse and (run_dir / done_file).is_file() and timing.is_file():
        return Step(name, run_dir, float(timing.read_text()))
    seconds = run_into(overrides, run_dir)
    timing.write_text(f"{seconds}\n")
    return Step(name, run_dir, seconds)


def run_all(work: Path, settings: Settings, reuse: bool) -> dict[str, Step]:
    autoencoder = run_step("autoencoder", ["task=train_autoencoder", "experiment=mnist_autoencoder",
                                           *settings.data, *settings.autoencoder], work, reuse, "eval.json")
    encode = run_step("encode", ["task=encode", "data=mnist", "data.root=null", "data.image_size=28",
                                 "autoencoder=own", f"autoencoder.run_dir={shown_path(autoencoder.run_dir)}",
                                 *settings.data], work, reuse, "latents.json")
    latent = run_step("latent", ["experiment=mnist_latent", f"data.path={shown_path(encode.run_dir)}",
                                 *settings.dit], work, reuse, "eval.json")
    pixel = run_step("pixel", ["experiment=mnist_latent", *PIXEL, *settings.data, *settings.dit], work, reuse,
                     "eval.json")
    return {step.name: step for step in (autoencoder, encode, latent, pixel)}


def training_figures(run_dir: Path) -> tuple[float, float, int]:
    """(median training samples/s over the epochs, training seconds, optimizer steps) of a run."""
    records = epoch_records(run_dir)
    return (statistics.median(r["samples_per_second"] for r in records), sum(r["epoch_seconds"] for r in records),
            max(int(r.get("step", 0)) for r in records))


def tables(steps: dict[str, Step]) -> tuple[list[str], dict[str, Any]]:
    """The runs' table and the figures the verdicts read."""
    autoencoder = read_eval(steps["autoencoder"].run_dir)
    manifest = json.loads((steps["encode"].run_dir / "latents.json").read_text())
    recipe = sum(steps[name].seconds for name in ("autoencoder", "encode", "latent"))
    figures: dict[str, Any] = {"recipe_minutes": recipe / 60}
    rows = []
    for name, label in (("latent", "latent DiT (7x7x4, patch 1)"), ("pixel", "pixel DiT (28x28x1, patch 4)")):
        per_second, seconds, optimizer_steps = training_figures(steps[name].run_dir)
        fd, std, floor = spread_score(read_eval(steps[name].run_dir))
        figures[name] = {"fd": fd, "std": std, "floor": floor, "per_second": per_second, "seconds": seconds}
        rows.append([label, str(optimizer_steps), f"{per_second:.0f}", f"{seconds / 60:.1f}",
                     f"{steps[name].seconds / 60:.1f}", f"{fmt(fd)} ± {fmt(std, '.2g')}", fmt(floor)])
    ae_fd, ae_std, ae_floor = spread_score(autoencoder)
    saved = figures["pixel"]["seconds"] - figures["latent"]["seconds"]
    text = [
        *markdown_table(["run", "optimizer steps", "training samples/s (median epoch)", "training min",
                         "command wall min", "FD (mean ± std of 3 sets)", "FD floor"], rows), "",
        f"Autoencoder: PSNR {autoencoder['psnr']['value']:.2f} dB on the held-out split; its reconstructions' FD "
        f"{fmt(ae_fd)} ± {fmt(ae_std, '.2g')} (bootstrap standard error) against the real-data floor {fmt(ae_floor)}: "
        f"the floor of a model in this latent space. Training {steps['autoencoder'].seconds / 60:.1f} min (command).",
        "",
        f"Encode: {sum(manifest['counts'].values())} images ({'each also flipped, ' if manifest['flips'] else ''}"
        f"train + val) to latents of shape {tuple(manifest['latent_shape'])} (scale {manifest['scale']:.3g}) in "
        f"{steps['encode'].seconds / 60:.1f} min (command); the latent run trained {abs(saved) / 60:.1f} min "
        f"{'faster' if saved > 0 else 'slower'} than the pixel run, which "
        f"{'repays' if saved > steps['encode'].seconds else 'does not repay'} the encode at this budget.",
        "",
        f"The recipe's three commands (autoencoder, encode, latent DiT): {figures['recipe_minutes']:.1f} min.",
    ]
    return text, figures


def verdicts(figures: dict[str, Any]) -> list[tuple[bool, str]]:
    latent, pixel = figures["latent"], figures["pixel"]
    return [
        (latent["fd"] <= FD_BAR * pixel["fd"],
         f"latent DiT FD within {FD_BAR:g}x of the pixel DiT's at equal optimizer steps: {latent['fd']:.3g} vs "
         f"{pixel['fd']:.3g} ({latent['fd'] / pixel['fd']:.2f}x; training {latent['seconds'] / 60:.1f} vs "
         f"{pixel['seconds'] / 60:.1f} min)"),
        (figures["recipe_minutes"] <= RECIPE_MINUTES,
         f"the recipe's three commands within {RECIPE_MINUTES:g} minutes: {figures['recipe_minutes']:.1f} min"),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_work_args(__doc__, argv)
    settings = QUICK if args.quick else FULL
    start, machine = time.perf_counter(), describe_machine()
    work = (args.work_dir or work_dir("benchmarks", "latents")).resolve()
    steps = run_all(work, settings, args.reuse)
    table, figures = tables(steps)
    method = ("Commands: `task=train_autoencoder experiment=mnist_autoencoder`, `task=encode data=mnist "
              "autoencoder=own autoencoder.run_dir=<it>`, `experiment=mnist_latent data.path=<the encoded folder>`, "
              f"and the pixel run `experiment=mnist_latent {' '.join(PIXEL)}`; shared: `{' '.join(settings.dit)}`. "
              "FD on the MNIST classifier's features of decoded (latent) or generated (pixel) digits, the real-data "
              "floor from held-out digits; ± is the standard deviation over the 3 seed sets. Wall times include "
              "each command's start-up and final scoring.")
    text, passed = checks_report("Latent against pixel DiT on MNIST: the latent recipe", machine, method, table,
                                 verdicts(figures), time.perf_counter() - start,
                                 reproduce_command("experiments.benchmarks.latents", argv))
    return finish_report(text, passed, args)


if __name__ == "__main__":
    sys.exit(main())

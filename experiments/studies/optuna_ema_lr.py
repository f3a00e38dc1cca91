"""EMA decay and learning rate, searched by Optuna (TPE, through ``hparams_search=optuna``).

The shipped search space also samples the noise schedule; this study drops it (``~hydra.sweeper.params.schedule``)
so that only ``trainer.lr`` (log scale, 1e-4..3e-3) and ``trainer.ema_decay`` (0.99..0.9999) vary. Optuna minimises
what ``run.py`` returns: the best validation loss of the EMA weights (each trial's FD is reported beside it):

    python run.py -m hparams_search=optuna '~hydra.sweeper.params.schedule' hydra.sweeper.n_trials=4 ...

    python -m experiments.studies.optuna_ema_lr [--budget small|full] [--quick] [--out experiments/studies/optuna_ema_lr]
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from diffusion.sweeps.report import JobResult, read_job
from experiments.lib import Score, fmt, fmt_score, markdown_table, read_eval, scores_of
from experiments.studies.common import Study, new_axes, override_value, parse_args, save_figure

QUESTION = (
    "Which learning rate and EMA decay train the default U-Net best at this budget? Optuna's TPE sampler "
    "(seed 0) proposes `trainer.lr` on a log scale in [1e-4, 3e-3] and `trainer.ema_decay` in [0.99, 0.9999]; "
    "each trial is one training run, and the objective is that run's best validation loss (epsilon MSE of the "
    "EMA weights at fixed timesteps and noise; it depends on the EMA decay because validation uses the averaged "
    "weights). FD of each trial's samples is reported beside it as a check that the objective tracks sample "
    "quality."
)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(__doc__, "optuna_ema_lr", argv)
    study = Study.from_args("optuna_ema_lr", args)
    n_trials = study.budget.n_trials
    sweep_dir, jobs = study.sweep(["hparams_search=optuna", "~hydra.sweeper.params.schedule",
                                   f"hydra.sweeper.n_trials={n_trials}", *study.budget.train_overrides()], "sweep")
    trials = [(float(override_value(j, "trainer.lr")), float(override_value(j, "trainer.ema_decay"))) for j in jobs]
    scores = [scores_of(read_eval(sweep_dir / job.job)) if (sweep_dir / job.job / "eval.json").is_file() else {}
              for job in jobs]
    best = read_best(sweep_dir)
    baseline_dir = study.run(study.budget.train_overrides(), "baseline")  # the defaults, same budget
    baseline = read_job(baseline_dir)
    baseline_trainer = yaml.safe_load((baseline_dir / "config.yaml").read_text())["trainer"]
    baseline_scores = scores_of(read_eval(baseline_dir))

    lines = study.header("EMA decay and learning rate through Optuna", QUESTION)
    lines += ["## Best found setting", "",
              f"`trainer.lr={fmt(best['best_params']['trainer.lr'], '.3g')} "
              f"trainer.ema_decay={fmt(best['best_params']['trainer.ema_decay'], '.5g')}`: best validation loss "
              f"{fmt(best['best_value'], '.4f')} (from `optimization_results.yaml`, after {n_trials} trials).", ""]
    if n_trials <= 10:
        lines += [f"With {n_trials} trials every proposal is one of the sampler's random start-up trials "
                  "(`n_startup_trials: 10`): at this budget the study is a seeded random search; TPE starts to "
                  "model the results from trial 11 (`--budget full` runs 30).", ""]
    lines += compare_to_defaults(best["best_value"], baseline.best_val_loss)
    lines += ["## Trials", ""]
    defaults = (baseline_trainer["lr"], baseline_trainer["ema_decay"])
    lines += trials_table([job.job for job in jobs] + ["defaults (not a trial)"], [*jobs, baseline],
                          [*trials, defaults], [*scores, baseline_scores])
    lines += rank_agreement([job.best_val_loss for job in jobs], [s["fd"].value if "fd" in s else math.nan
                                                                  for s in scores])
    objective = [job.best_val_loss for job in jobs]
    lines += [plot_search(study, trials, objective), "", plot_trials(study, objective), ""]
    lines += study.commands_section()
    study.write(lines)
    return 0


def trials_table(names: Sequence[str], jobs: Sequence[JobResult], settings: Sequence[tuple[float, float]],
                 scores: Sequence[dict[str, Score]]) -> list[str]:
    rows = [[name, fmt(lr, ".3g"), fmt(decay, ".5g"), fmt(job.best_val_loss, ".4f"), str(job.best_epoch),
             fmt(s["fd"].value if "fd" in s else None), fmt_score(s.get("kid"), ".2g"),
             fmt(job.wall_time_s / 60, ".1f")]
            for name, job, (lr, decay), s in zip(names, jobs, settings, scores, strict=True)]
    return [*markdown_table(["trial", "trainer.lr", "trainer.ema_decay", "best val loss (objective)", "best epoch",
                             "FD", "KID ± se", "minutes"], rows), ""]


def compare_to_defaults(best_value: float, default_value: float) -> list[str]:
    """Whether the search beat the shipped ``trainer.lr`` and ``trainer.ema_decay`` at the same budget."""
    if best_value < default_value:
        return [f"It beats the shipped defaults at the same budget (validation loss {fmt(default_value, '.4f')}).", ""]
    return [f"It does not beat the shipped defaults at the same budget (validation loss {fmt(default_value, '.4f')}, "
            "last row below): this few trials cover the space too thinly. More trials (`--budget full`) are needed "
            "before the search says something the defaults do not.", ""]


def read_best(sweep_dir: Path) -> dict[str, Any]:
    """The sweeper's ``optimization_results.yaml``: ``best_params`` and ``best_value``."""
    path = sweep_dir / "optimization_results.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the Optuna sweep did not finish; see {sweep_dir}.log")
    return yaml.safe_load(path.read_text())


def rank_agreement(objective: Sequence[float], fd: Sequence[float]) -> list[str]:
    """Whether the trial the objective picks is also the one with the lowest FD."""
    pairs = [(o, f, i) for i, (o, f) in enumerate(zip(objective, fd, strict=True)) if math.isfinite(o * f)]
    if len(pairs) < 2:
        return []
    by_objective, by_fd = min(pairs)[2], min(pairs, key=lambda p: p[1])[2]
    if by_objective == by_fd:
        return [f"The trial with the lowest validation loss (trial {by_objective}) also has the lowest FD.", ""]
    return [f"The lowest validation loss (trial {by_objective}) and the lowest FD (trial {by_fd}) are different "
            "trials: with so few epochs the validation loss is only a rough proxy for sample quality "
            "(`trainer.monitor=fd` with `evaluator.every_n_epochs` makes FD the objective).", ""]


def plot_search(study: Study, trials: Sequence[tuple[float, float]], objective: Sequence[float]) -> str:
    """The proposals in the (lr, 1 - ema_decay) plane, coloured by the objective; the best ringed."""
    figure, axes = new_axes(6.0, 4.5)
    lrs, horizons = [lr for lr, _ in trials], [1 - decay for _, decay in trials]
    points = axes.scatter(lrs, horizons, c=objective, cmap="viridis_r", s=70, edgecolors="black")
    figure.colorbar(points, ax=axes, label="best validation loss")
    best = min(range(len(objective)), key=lambda i: objective[i] if math.isfinite(objective[i]) else math.inf)
    axes.scatter([lrs[best]], [horizons[best]], s=260, facecolors="none", edgecolors="red", label="best")
    for i, (x, y) in enumerate(zip(lrs, horizons, strict=True)):
        axes.annotate(str(i), (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    axes.set(xscale="log", yscale="log", xlabel="trainer.lr", ylabel="1 - trainer.ema_decay",
             title="Optuna proposals (number: trial)", xlim=(8e-5, 4e-3), ylim=(7e-5, 1.3e-2))
    axes.grid(alpha=0.3, which="both")
    axes.legend()
    return save_figure(figure, study, "search.png")


def plot_trials(study: Study, objective: Sequence[float]) -> str:
    """The objective of each trial and the best so far."""
    figure, axes = new_axes(6.0, 3.6)
    running = [min(objective[: i + 1]) for i in range(len(objective))]
    axes.plot(range(len(objective)), objective, "o", label="trial")
    axes.step(range(len(objective)), running, where="post", label="best so far")
    axes.set(xlabel="trial", ylabel="best validation loss", title="Optuna objective per trial")
    axes.grid(alpha=0.3)
    axes.legend()
    return save_figure(figure, study, "trials.png")


if __name__ == "__main__":
    sys.exit(main())

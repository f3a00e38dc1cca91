"""Prediction targets: epsilon (Ho et al. 2020) vs x0 vs v (Salimans & Ho 2022), each with uniform loss
weighting and with min-SNR-gamma weighting (Hang et al. 2023, gamma = 5), compared by FD of the samples.

One sweep of six jobs:

    python run.py -m method.prediction=epsilon,x0,v method.loss_weighting=uniform,min_snr trainer.epochs=15 ...

    python -m experiments.studies.targets [--budget small|full] [--quick] [--out experiments/studies/targets]
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

from experiments.lib import Score, fmt, fmt_score, markdown_table, read_eval, scores_of
from experiments.studies.common import Study, new_axes, override_value, parse_args, plot_val_curves, save_figure, \
    still_improving

PREDICTIONS = ("epsilon", "x0", "v")
WEIGHTINGS = ("uniform", "min_snr")
QUESTION = (
    "Which prediction target, and does min-SNR weighting help, at the same training budget? The network "
    "predicts the noise (epsilon), the clean image (x0) or the velocity v = sqrt(abar) eps - sqrt(1 - abar) x0; "
    "`min_snr` reweights each timestep's loss to min(SNR_t, 5) in x0 space. Same U-Net, seed, data order and "
    "linear schedule everywhere; samples from each run's best EMA checkpoint are scored by FD on the shipped digit "
    "classifier's features, beside the real-data floor."
)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(__doc__, "targets", argv)
    study = Study.from_args("targets", args)
    sweep_dir, jobs = study.sweep([f"method.prediction={','.join(PREDICTIONS)}",
                                   f"method.loss_weighting={','.join(WEIGHTINGS)}",
                                   *study.budget.train_overrides()], "sweep")
    settings = [(override_value(j, "method.prediction"), override_value(j, "method.loss_weighting")) for j in jobs]
    scores = [scores_of(read_eval(sweep_dir / job.job)) for job in jobs]
    fd = {setting: s.get("fd") for setting, s in zip(settings, scores, strict=True)}

    lines = study.header("Prediction targets: epsilon vs x0 vs v, with and without min-SNR weighting", QUESTION)
    lines += ["## Results", ""]
    lines += [*markdown_table(
        ["prediction", "weighting", "FD", "FD floor", "KID ± se", "class coverage", "best val loss *",
         "best epoch", "train min"],
        [[p, w, fmt(s["fd"].value), fmt(s["fd"].floor), fmt_score(s.get("kid"), ".2g"),
          fmt(s["class_coverage"].value if "class_coverage" in s else None, ".0%"), fmt(job.best_val_loss, ".4f"),
          str(job.best_epoch), fmt(job.wall_time_s / 60, ".1f")]
         for (p, w), s, job in zip(settings, scores, jobs, strict=True)]), ""]
    lines += ["\\* Validation loss is each run's own training objective (its target's MSE, weighted by its "
              "weighting) at fixed timesteps and noise: it compares epochs of one run, not runs with different "
              "targets or weightings, with one exception: under `min_snr` every target's loss is the same x0-space "
              "quantity, min(SNR_t, 5) ||x0_hat - x0||^2, so the three `min_snr` rows compare. FD compares all six.",
              "", study.budget.sampler_note(), ""]
    lines += findings(fd)
    lines += still_improving(jobs, study.budget.epochs)
    labels = [f"{p}, {w}" for p, w in settings]
    lines += [plot_grouped(study, fd), "",
              plot_val_curves(study, jobs, labels, "val_loss.png", "Validation loss (each run's own objective)"), ""]
    lines += study.commands_section()
    study.write(lines)
    return 0


def findings(fd: dict[tuple[str, str], Score | None]) -> list[str]:
    """The best setting, and for each target whether min-SNR lowered its FD."""
    finite = {k: v.value for k, v in fd.items() if v is not None and math.isfinite(v.value)}
    if not finite:
        return []
    best = min(finite, key=finite.__getitem__)
    lines = [f"Lowest FD: **{best[0]} with {best[1]} weighting** ({fmt(finite[best])}).", ""]
    for prediction in PREDICTIONS:
        uniform, min_snr = finite.get((prediction, "uniform")), finite.get((prediction, "min_snr"))
        if uniform is not None and min_snr is not None:
            change = (min_snr - uniform) / uniform
            lines.append(f"- {prediction}: min-SNR changes FD by {change:+.0%} ({fmt(uniform)} -> {fmt(min_snr)}).")
    return [*lines, "", "One seed per setting: differences of a few percent are within run-to-run noise.", ""]


def plot_grouped(study: Study, fd: dict[tuple[str, str], Score | None]) -> str:
    """FD bars grouped by prediction target, one bar per weighting, with the real-data floor."""
    figure, axes = new_axes(6.5, 4.2)
    width = 0.38
    for offset, weighting in enumerate(WEIGHTINGS):
        values = [fd[(p, weighting)].value if fd.get((p, weighting)) else math.nan for p in PREDICTIONS]
        positions = [i + (offset - 0.5) * width for i in range(len(PREDICTIONS))]
        bars = axes.bar(positions, values, width, label=weighting)
        axes.bar_label(bars, fmt=_short, fontsize=8)
    floors = [s.floor for s in fd.values() if s is not None and s.floor is not None]
    if floors:
        axes.axhline(floors[0], color="gray", linestyle="--", label=f"real-data floor {floors[0]:.3g}")
    axes.set_xticks(range(len(PREDICTIONS)), PREDICTIONS)
    axes.set(xlabel="prediction target", ylabel="FD (lower is better)", title="FD by prediction target and weighting")
    axes.grid(axis="y", alpha=0.3)
    axes.legend()
    return save_figure(figure, study, "fd.png")


def _short(value: float) -> str:
    return format(value, ".3g")


if __name__ == "__main__":
    sys.exit(main())

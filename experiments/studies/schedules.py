"""Noise schedules: linear (Ho et al. 2020) vs cosine (Nichol & Dhariwal 2021) vs sigmoid (Jabri et
al. 2022) at the same training budget, compared by validation loss and by FD of the samples.

One sweep, three jobs that differ only in ``schedule``:

    python run.py -m schedule=linear,cosine,sigmoid trainer.epochs=15 evaluator.num_samples=180 \\
        method=ddim sampler.steps=50 ...

    python -m experiments.studies.schedules [--budget small|full] [--quick] [--out experiments/studies/schedules]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from experiments.lib import Score, fmt, fmt_score, markdown_table, read_eval, scores_of
from experiments.studies.common import Study, override_value, parse_args, plot_scores, plot_val_curves, \
    still_improving

SCHEDULES = ("linear", "cosine", "sigmoid")
QUESTION = (
    "Which noise schedule gives the best digits at the same training budget? Each schedule trains the same "
    "U-Net with the same seed, data order and epsilon-prediction loss; only `schedule` differs. Samples are drawn "
    "from each run's best EMA checkpoint (by validation loss) and scored by FD on the shipped digit classifier's "
    "features, beside the real-data floor (held-out vs training digits at the same sample count)."
)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(__doc__, "schedules", argv)
    study = Study.from_args("schedules", args)
    sweep_dir, jobs = study.sweep([f"schedule={','.join(SCHEDULES)}", *study.budget.train_overrides()], "sweep")
    labels = [override_value(job, "schedule") for job in jobs]
    scores = [scores_of(read_eval(sweep_dir / job.job)) for job in jobs]

    rows = [
        [label, fmt(job.best_val_loss, ".4f"), str(job.best_epoch), fmt(job.final_val_loss, ".4f"),
         fmt_score(s.get("fd")), fmt(s["fd"].floor if "fd" in s else None), fmt_score(s.get("kid"), ".2g"),
         fmt(s["class_coverage"].value if "class_coverage" in s else None, ".0%"), fmt(job.wall_time_s / 60, ".1f")]
        for label, job, s in zip(labels, jobs, scores, strict=True)
    ]
    fd = [s.get("fd") for s in scores]
    best = min(range(len(jobs)), key=lambda i: fd[i].value if fd[i] else float("inf"))
    lines = study.header("Noise schedules: linear vs cosine vs sigmoid", QUESTION)
    lines += ["## Results", ""]
    lines += [*markdown_table(
        ["schedule", "best val loss", "best epoch", "final val loss", "FD", "FD floor", "KID ± se",
         "class coverage", "train min"], rows), ""]
    lines += [f"Lowest FD: **{labels[best]}** ({fmt_score(fd[best])}).", ""]
    lines += findings(labels, fd)
    lines += still_improving(jobs, study.budget.epochs)
    lines += [study.budget.sampler_note(), ""]
    lines += [
        plot_scores(study, labels, fd, "fd.png", "FD by noise schedule"), "",
        plot_val_curves(study, jobs, labels, "val_loss.png", "Validation loss by noise schedule"), "",
        "Validation loss is the epsilon MSE at fixed timesteps and noise, on the EMA weights. It is the same "
        "quantity for all three runs but not the same task: each schedule puts different noise levels at the "
        "uniformly drawn timesteps (the cosine and sigmoid schedules keep more signal at small and middle t), so "
        "a lower validation loss need not mean better samples. FD is the comparable number.", "",
    ]
    lines += study.commands_section()
    study.write(lines)
    return 0


def findings(labels: Sequence[str], fd: Sequence[Score | None]) -> list[str]:
    """One sentence per schedule relative to the best FD, in FD order, with overlap of the error bars noted."""
    order = sorted(range(len(labels)), key=lambda i: fd[i].value if fd[i] else float("inf"))
    head = fd[order[0]]
    if head is None:
        return []
    lines = []
    for i in order[1:]:
        score = fd[i]
        if score is None:
            continue
        gap = score.value - head.value
        spread = (score.std_error or 0.0) + (head.std_error or 0.0)
        within = " (within the summed standard errors: not a clear difference)" if gap <= spread else ""
        lines.append(f"- {labels[i]}: FD {gap:+.3g} vs {labels[order[0]]}{within}.")
    return [*lines, ""]


if __name__ == "__main__":
    sys.exit(main())

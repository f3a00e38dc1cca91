"""Summarize a sweep: one row per job, sorted by the objective, with validation-loss curves.

    python -m diffusion.sweeps.report outputs/multirun/2024-05-01/12-00-00 [--objective fd]

writes ``report.md``, ``report.csv``, ``report_curves.png`` and ``report_objective.png`` into the sweep directory.
Jobs that differ only in ``seed`` form one row of ``report.md`` and one curve (mean ± std over the seeds; also
``report_seeds.csv``); ``report.csv`` keeps a row per job.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from diffusion.runtime.checks import EXIT_USER_ERROR, ConfigError
from diffusion.sweeps.job_results import JobResult, find_jobs, read_job  # noqa: F401 - JobResult: callers import it from here
from diffusion.sweeps.report_plots import plot_objective, plot_val_curves
from diffusion.sweeps.report_tables import (
    choose_objective,
    group_rows,
    rank_jobs,
    split_overrides,
    table_rows,
    write_csv,
    write_markdown,
)
from diffusion.sweeps.seed_groups import group_by_seed, rank_groups


def write_report(sweep_dir: str | Path, objective: str | None = None, now: float | None = None) -> list[Path]:
    """Write the report files into ``sweep_dir`` and return their paths."""
    sweep = Path(sweep_dir)
    jobs = [read_job(job_dir, now) for job_dir in find_jobs(sweep)]
    chosen = choose_objective(jobs, objective)
    ranked = rank_jobs(jobs, chosen)
    common = split_overrides(jobs)
    groups = group_by_seed(jobs)
    if all(group.seeds == 1 for group in groups):
        return [
            write_markdown(
                sweep / "report.md", sweep, chosen, common, *table_rows(ranked, chosen, all_overrides=False)
            ),
            write_csv(sweep / "report.csv", *table_rows(ranked, chosen)),
            plot_val_curves(jobs, sweep / "report_curves.png"),
            plot_objective(ranked, chosen, sweep / "report_objective.png"),
        ]
    ranked_groups = rank_groups(groups, lambda job: job.value(chosen))
    markdown_cells = group_rows(ranked_groups, chosen, common)
    return [
        write_markdown(sweep / "report.md", sweep, chosen, common, *markdown_cells, groups=ranked_groups),
        write_csv(sweep / "report.csv", *table_rows(ranked, chosen)),
        write_csv(sweep / "report_seeds.csv", *group_rows(ranked_groups, chosen, common, split=True)),
        plot_val_curves(jobs, sweep / "report_curves.png", ranked_groups),
        plot_objective(ranked, chosen, sweep / "report_objective.png"),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffusion.sweeps.report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="a multirun directory: outputs/multirun/<date>/<time>")
    parser.add_argument(
        "--objective", default=None, help="metric to sort by (default: fd or fid if a job has it, else best_val_loss)"
    )
    args = parser.parse_args(argv)
    try:
        written = write_report(args.sweep_dir, args.objective)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m diffusion.sweeps.report``: a fake sweep directory in, report.md / report.csv / plots out."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from runs import ROOT

from diffusion.sweeps.job_results import job_status, read_job, wall_time
from diffusion.sweeps.report import main, write_report

HOUR_AGO = time.time() - 3600


def write_job(
    sweep: Path,
    name: str,
    overrides: list[str],
    val_losses: list[float],
    *,
    epochs_planned: int = 3,
    checkpoint: bool = True,
    eval_metrics: dict[str, float] | None = None,
) -> Path:
    job = sweep / name
    job.mkdir(parents=True)
    (job / "config.yaml").write_text(f"trainer:\n  epochs: {epochs_planned}\n  lr: 0.001\n")
    (job / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    lines = [json.dumps({"step": 1, "time": 0.5, "train/loss_step": 9.0, "lr": 0.001})]
    for epoch, val in enumerate(val_losses, start=1):
        record = {"step": 10 * epoch, "time": 2.0 * epoch, "epoch": epoch, "train/loss": val + 0.1, "val/loss": val}
        lines.append(json.dumps(record))
    (job / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if checkpoint:
        (job / "checkpoints").mkdir()
        (job / "checkpoints" / "last.pt").write_bytes(b"x")
    if eval_metrics is not None:
        payload = {k: {"value": v, "floor": 0.1} for k, v in eval_metrics.items()}
        payload.update(num_samples=100, sampler="ddim", steps=50, seconds_per_sample=0.01)  # not metrics
        (job / "eval.json").write_text(json.dumps(payload))
    for path in job.rglob("*"):
        os.utime(path, (HOUR_AGO, HOUR_AGO))  # a finished sweep: nothing changed recently
    return job


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "multirun" / "2024-05-01" / "12-00-00"
    write_job(root, "0", ["trainer.lr=1e-4", "hydra.job.num=0", "method=ddim"], [1.0, 0.8, 0.9])
    write_job(root, "1", ["trainer.lr=3e-4", "method=ddim"], [0.9, 0.5, 0.6])
    write_job(root, "2", ["trainer.lr=1e-2", "method=ddim"], [2.0], checkpoint=False)
    return root


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_rows_sorted_by_best_val_loss_with_best_marked(sweep: Path) -> None:
    written = write_report(sweep)
    assert {p.name for p in written} == {"report.md", "report.csv", "report_curves.png", "report_objective.png"}
    rows = read_csv(sweep / "report.csv")
    assert [r["job"] for r in rows] == ["1", "0", "2"]
    assert [r["best"] for r in rows] == ["best", "", ""]
    first = rows[0]
    assert first["overrides"] == "trainer.lr=3e-4 method=ddim"
    assert (first["best_epoch"], float(first["best_val_loss"])) == ("2", 0.5)
    assert (float(first["final_val_loss"]), float(first["final_train_loss"])) == (0.6, pytest.approx(0.7))
    assert first["status"] == "completed" and float(first["wall_time_s"]) == 6.0
    assert rows[1]["overrides"] == "trainer.lr=1e-4 method=ddim"  # hydra.* overrides left out
    assert rows[2]["status"] == "failed"  # no checkpoints/last.pt and nothing written for an hour
    markdown = (sweep / "report.md").read_text()
    assert "| 1 | **best** | 1 | completed | trainer.lr=3e-4 |" in markdown  # only what differs between jobs
    assert "sorted by `best_val_loss`" in markdown and "Overrides of every job: `method=ddim`" in markdown
    assert (sweep / "report_curves.png").stat().st_size > 1000


def test_eval_metric_becomes_the_objective(sweep: Path) -> None:
    write_job(sweep, "3", ["trainer.lr=2e-4", "method=ddim"], [0.95, 0.94, 0.93], eval_metrics={"fd": 1.5, "kid": 0.01})
    write_job(sweep, "4", ["trainer.lr=5e-4", "method=ddim"], [0.99, 0.98, 0.97], eval_metrics={"fd": 0.7, "kid": 0.02})
    write_report(sweep)
    rows = read_csv(sweep / "report.csv")
    assert [r["job"] for r in rows][:2] == ["4", "3"]  # by fd; jobs without fd after them
    assert rows[0]["best"] == "best" and float(rows[0]["fd"]) == 0.7 and float(rows[0]["kid"]) == 0.02
    assert rows[2]["fd"] == "" and "num_samples" not in rows[0] and "steps" not in rows[0]
    assert "sorted by `fd`" in (sweep / "report.md").read_text()
    write_report(sweep, objective="best_val_loss")
    assert read_csv(sweep / "report.csv")[0]["job"] == "1"


def test_status_running_failed_marker_and_resumed_wall_time(sweep: Path) -> None:
    unfinished = sweep / "0"
    (unfinished / "metrics.jsonl").touch()
    assert job_status(unfinished, epochs_done=2) == "running"  # fewer epochs than planned, logs fresh
    assert job_status(unfinished, epochs_done=3) == "completed"
    (unfinished / "error.txt").write_text("boom")
    assert read_job(unfinished).status == "failed"
    assert wall_time([0.5, 2.0, 4.0, 0.3, 3.0]) == 7.0  # elapsed time restarts when a run resumes


@pytest.mark.parametrize("case", ["missing", "file", "single_run", "empty", "day_of_sweeps"])
def test_bad_paths_exit_2_with_one_line(tmp_path: Path, sweep: Path, case: str, capsys) -> None:
    target = {
        "missing": tmp_path / "nope",
        "file": sweep / "0" / "config.yaml",
        "single_run": sweep / "1",
        "empty": tmp_path / "empty",
        "day_of_sweeps": sweep.parent,
    }[case]
    if case == "empty":
        target.mkdir()
    assert main([str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    if case == "single_run":
        assert "expects a sweep directory" in err
    if case == "day_of_sweeps":
        assert "pass one of them: 12-00-00" in err


def test_sweep_where_no_job_finished_an_epoch(tmp_path: Path) -> None:
    write_job(tmp_path, "0", ["trainer.lr=1"], [], checkpoint=False)
    write_report(tmp_path)
    row = read_csv(tmp_path / "report.csv")[0]
    assert (row["status"], row["best"], row["best_val_loss"], row["epochs"]) == ("failed", "", "", "0")


def test_unknown_objective_is_a_user_error(sweep: Path, capsys) -> None:
    assert main([str(sweep), "--objective", "fdd"]) == 2
    assert "--objective must be one of" in capsys.readouterr().err


def test_module_entry_point(sweep: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ok = subprocess.run([sys.executable, "-m", "diffusion.sweeps.report", str(sweep)], env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "report.md" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "diffusion.sweeps.report", str(sweep / "x")], env=env, capture_output=True)
    assert bad.returncode == 2


def seed_sweep(root: Path) -> Path:
    """Two learning rates, three seeds each (seed is not the last override, as on a command line)."""
    curves = {"1e-4": [[1.0, 0.8], [0.9, 0.6], [0.95, 0.7]], "3e-4": [[0.7, 0.5], [0.6, 0.4], [0.8, 0.6]]}
    number = 0
    for seed in range(3):
        for lr, per_seed in curves.items():
            write_job(root, str(number), [f"seed={seed}", f"trainer.lr={lr}", "method=ddim"], per_seed[seed],
                      epochs_planned=2, eval_metrics={"kid": 0.01 * (seed + 1)})
            number += 1
    return root


def test_jobs_that_differ_only_in_seed_are_one_row_with_mean_std_and_count(tmp_path: Path) -> None:
    sweep = seed_sweep(tmp_path / "sweep")
    written = write_report(sweep)
    assert {p.name for p in written} >= {"report.md", "report.csv", "report_seeds.csv", "report_curves.png"}
    assert len(read_csv(sweep / "report.csv")) == 6  # per-seed rows stay
    groups = read_csv(sweep / "report_seeds.csv")
    assert [(g["overrides"], g["jobs"], g["seeds"], g["best"]) for g in groups] == [
        ("trainer.lr=3e-4", "1,3,5", "3", "best"), ("trainer.lr=1e-4", "0,2,4", "3", "")]
    assert float(groups[0]["best_val_loss_mean"]) == pytest.approx(0.5)
    assert float(groups[0]["best_val_loss_std"]) == pytest.approx(0.1)
    assert float(groups[1]["best_val_loss_mean"]) == pytest.approx(0.7)
    assert float(groups[0]["kid_mean"]) == pytest.approx(0.02) and groups[0]["status"] == "3 completed"
    markdown = (sweep / "report.md").read_text()
    assert "6 jobs (6 completed) in 2 groups of jobs that differ only in `seed`" in markdown
    row = "| 1 | **best** | 1,3,5 | 3 | 3 completed | trainer.lr=3e-4 | 2 ± 0 | 0.6 ± 0.1 | 0.5 ± 0.1 | 0.5 ± 0.1 |"
    assert row in markdown
    assert "0.5 ± 0.1 |" in markdown
    assert (sweep / "report_curves.png").stat().st_size > 1000


def test_seed_group_mean_curve_band_and_partial_seeds(tmp_path: Path) -> None:
    from diffusion.sweeps.seed_groups import group_by_seed

    sweep = seed_sweep(tmp_path / "sweep")
    write_job(sweep, "6", ["trainer.lr=1e-2", "method=ddim"], [3.0])  # no seed override: its own group
    write_job(sweep, "7", ["trainer.lr=1e-2", "method=ddim"], [2.0])
    jobs = [read_job(job) for job in sorted(sweep.iterdir(), key=lambda p: int(p.name))]
    groups = group_by_seed(jobs)
    assert [g.seeds for g in groups] == [3, 3, 1, 1]
    mean, std = groups[1].mean_curve()
    assert mean == pytest.approx([0.7, 0.5]) and std == pytest.approx([0.1, 0.1])
    assert groups[2].mean_curve() == ([3.0], [0.0])  # one seed: no band


def test_pruned_job_is_reported_as_pruned_and_never_best(sweep: Path) -> None:
    (sweep / "2" / "pruned.json").write_text('{"trial": 2, "epoch": 1}')
    write_job(sweep, "3", ["trainer.lr=1e-5", "method=ddim"], [0.1], checkpoint=False)  # lowest, then pruned
    (sweep / "3" / "pruned.json").write_text('{"trial": 3, "epoch": 1}')
    write_report(sweep)
    rows = read_csv(sweep / "report.csv")
    assert [r["status"] for r in rows if r["job"] == "2"] == ["pruned"]
    assert (rows[0]["job"], rows[0]["best"]) == ("3", "") and rows[1]["best"] == "best"
    assert "2 pruned" in (sweep / "report.md").read_text()


def _seeded_eval(job: Path, per_seed: list[float]) -> None:
    """An eval.json scored over evaluator.seeds: the mean as value, std / sqrt(n) as its standard error."""
    import statistics

    std = statistics.stdev(per_seed)
    entry = {"value": statistics.fmean(per_seed), "floor": 0.1, "std_error": std / len(per_seed) ** 0.5,
             "per_seed": per_seed, "std_over_seeds": std, "min_over_seeds": min(per_seed)}
    (job / "eval.json").write_text(json.dumps({"fd": entry, "num_samples": 100, "seeds": [0, 1, 2]}))


def test_evaluator_seeds_show_mean_std_min_and_near_jobs_tie(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    for name, lr, per_seed in (("0", "1e-4", [2.0, 2.2, 2.4]), ("1", "3e-4", [2.1, 2.3, 2.5]),
                               ("2", "1e-3", [5.0, 5.1, 5.2])):
        _seeded_eval(write_job(sweep, name, [f"trainer.lr={lr}"], [1.0]), per_seed)
    write_report(sweep)
    rows = {row["job"]: row for row in read_csv(sweep / "report.csv")}
    # 2.2 and 2.3 differ by 0.1, less than sqrt(se0^2 + se1^2) = 0.163: a tie, not a ranking.
    assert [(rows[j]["rank"], rows[j]["best"]) for j in "012"] == [("1=", "tie"), ("1=", "tie"), ("3", "")]
    assert float(rows["0"]["fd_std_over_seeds"]) == pytest.approx(0.2) and float(rows["0"]["fd_min_over_seeds"]) == 2.0
    markdown = (sweep / "report.md").read_text()
    assert "| 1= | **tie** | 0 |" in markdown and "2.2 ± 0.2, min 2" in markdown


def test_seed_groups_within_their_standard_errors_tie_and_show_the_minimum(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    for index, (lr, seed, fd) in enumerate([("1e-4", 0, 2.0), ("3e-4", 0, 2.1), ("1e-4", 1, 2.4), ("3e-4", 1, 2.3)]):
        write_job(sweep, str(index), [f"trainer.lr={lr}", f"seed={seed}"], [1.0], eval_metrics={"fd": fd})
    write_report(sweep)
    groups = read_csv(sweep / "report_seeds.csv")
    assert [(g["rank"], g["best"], g["fd_min"]) for g in groups] == [("1=", "tie", "2"), ("1=", "tie", "2.1")]

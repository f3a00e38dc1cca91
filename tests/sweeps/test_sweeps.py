"""Sweeps end to end: ``run.py -m`` on each local launcher, the Optuna search, and the checks a sweep makes
before its first job. Every job is a one-epoch moons MLP; all output stays in the test's temporary directory."""

from __future__ import annotations

import csv
import json
import math
import re
import sqlite3
from pathlib import Path

import pytest
import yaml
from runs import ROOT, TINY_MOONS, main_in_process, ok, run_py

from diffusion.sweeps.report import main as report_main

TINY = [*TINY_MOONS, "trainer.epochs=1"]
LR_SWEEP = "trainer.lr=1e-4,3e-4"


@pytest.fixture(autouse=True)
def one_thread_per_job(monkeypatch):
    """Jobs run side by side (and beside other tests) on few cores; a tiny MLP gains nothing from more threads,
    and OpenMP threads competing for busy cores make sampling ~100x slower."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def finished_jobs(sweep: Path) -> list[Path]:
    """The sweep's job directories, each checked to hold a finished run."""
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    for job in jobs:
        for name in ("checkpoints/best.pt", "checkpoints/last.pt", "train.log", "metrics.jsonl", "samples.npz"):
            assert (job / name).is_file(), f"{job.name}/{name}"
    return jobs


def report_rows(sweep: Path) -> list[dict[str, str]]:
    """``python -m diffusion.sweeps.report <sweep>`` (in this process) and the rows of the report.csv it writes."""
    assert report_main([str(sweep)]) == 0
    with (sweep / "report.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def assert_two_lr_jobs(sweep: Path) -> None:
    jobs = finished_jobs(sweep)
    assert [job.name for job in jobs] == ["0", "1"]
    swept = [yaml.safe_load((job / "overrides.yaml").read_text())[-1] for job in jobs]
    assert swept == ["trainer.lr=0.0001", "trainer.lr=0.0003"]
    rows = report_rows(sweep)
    assert sorted(row["job"] for row in rows) == ["0", "1"]
    assert {row["status"] for row in rows} == {"completed"}


def test_basic_launcher_runs_one_directory_per_job(tmp_path):
    """Without hydra.sweep.dir the jobs land in outputs/multirun/<date>/<time>/<job>/ of the working directory."""
    ok(run_py(tmp_path, "-m", *TINY, LR_SWEEP))
    (sweep,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    assert_two_lr_jobs(sweep)


def test_joblib_launcher_runs_jobs_in_parallel_processes(tmp_path):
    sweep = tmp_path / "sweep"
    result = ok(run_py(tmp_path, "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                       f"hydra.sweep.dir={sweep}", *TINY, LR_SWEEP))
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr
    assert_two_lr_jobs(sweep)


def test_submitit_local_launcher_runs_jobs_as_submitit_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    ok(run_py(tmp_path, "-m", "hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep}", *TINY, LR_SWEEP))
    assert len(list((sweep / ".submitit").glob("*/*_0_result.pkl"))) == 2  # submitit's record of each job
    assert_two_lr_jobs(sweep)  # the report skips .submitit/


def stored_trials(database: Path) -> list[tuple[int, str, float | None]]:
    """(number, state, value) of every trial in an Optuna SQLite storage, read with plain sqlite3."""
    with sqlite3.connect(database) as connection:
        return connection.execute(
            "SELECT t.number, t.state, v.value FROM trials t LEFT JOIN trial_values v ON v.trial_id = t.trial_id "
            "ORDER BY t.number"
        ).fetchall()


def best_val_loss(job: Path) -> float:
    records = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
    return [r["best/val_loss"] for r in records if "best/val_loss" in r][-1]


def test_optuna_search_stores_its_study_and_continues_it(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    ok(run_py(tmp_path, "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={first}", *TINY))
    database = first / "optuna.db"
    trials = stored_trials(database)
    assert [(number, state) for number, state, _ in trials] == [(0, "COMPLETE"), (1, "COMPLETE")]
    # The objective each trial reported is what its job returned: the best validation loss.
    for (_, _, value), job in zip(trials, finished_jobs(first), strict=True):
        assert math.isclose(value, best_val_loss(job), rel_tol=1e-6)
    params = [sorted(yaml.safe_load((job / "overrides.yaml").read_text())[:3]) for job in finished_jobs(first)]
    assert [[o.split("=")[0] for o in p] for p in params] == [["schedule", "trainer.ema_decay", "trainer.lr"]] * 2
    best = yaml.safe_load((first / "optimization_results.yaml").read_text())
    assert best["best_value"] == min(value for _, _, value in trials)

    # A new sweep given the stored study adds its trials to it (a new sampler seed proposes new ones).
    result = ok(run_py(tmp_path, "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=1",
                       f"hydra.sweep.dir={second}", f"hydra.sweeper.storage=sqlite:///{database}",
                       "hydra.sweeper.sampler.seed=1", *TINY))
    assert "warning: continuing the Optuna study" in result.stderr
    assert [(number, state) for number, state, _ in stored_trials(database)][-1] == (2, "COMPLETE")
    (job,) = finished_jobs(second)
    assert sorted(yaml.safe_load((job / "overrides.yaml").read_text())[:3]) not in params
    assert not (second / "optuna.db").exists()


@pytest.mark.parametrize(
    ("choice", "options"),
    [("hydra/launcher=jobblib", ["basic", "joblib", "slurm", "submitit_local", "submitit_slurm"]),
     ("hydra/sweeper=optunaa", ["basic", "optuna"])],
)
def test_unknown_launcher_or_sweeper_lists_the_available_ones(tmp_path, monkeypatch, capsys, choice, options):
    code = main_in_process(monkeypatch, "-m", f"hydra.sweep.dir={tmp_path / 'sweep'}", choice, LR_SWEEP)
    message = capsys.readouterr().err
    assert code != 0 and choice.split("=")[1] in message, message
    assert all(re.search(rf"\b{option}\b", message) for option in options), message
    assert not (tmp_path / "sweep").exists()


TYPO_SEARCH_SPACE = """# @package _global_
defaults:
  - optuna
hydra:
  sweeper:
    params:
      trainer.emma_decay: interval(0.9, 0.99)
"""

BAD_SWEEPS = [
    (["trainer.lrr=1e-4,3e-4"], "the command line sweeps trainer.lrr", "did you mean trainer.lr?"),
    (["hparams_search=optuna", "trainer.ema_decy=interval(0.9,0.99)"], "trainer.ema_decy", "did you mean trainer.ema_decay?"),
    (["hparams_search=typo"], "hydra.sweeper.params sweeps trainer.emma_decay", "did you mean trainer.ema_decay?"),
    (["schedule=linear,cosin"], "schedule=cosin", "'sigmoid'"),
    (["hydra/launcher=slurm", LR_SWEEP], "hydra.launcher.max_num_timeout=3", "resume=auto"),
]


@pytest.mark.parametrize(("overrides", "what", "hint"), BAD_SWEEPS, ids=[" ".join(o) for o, _, _ in BAD_SWEEPS])
def test_bad_sweep_is_one_line_before_any_job(tmp_path, monkeypatch, capsys, overrides, what, hint):
    """Checked by diffusion.app.sweep_checks before the first job (and before Optuna opens its study)."""
    (tmp_path / "conf" / "hparams_search").mkdir(parents=True)
    (tmp_path / "conf" / "hparams_search" / "typo.yaml").write_text(TYPO_SEARCH_SPACE)
    sweep = tmp_path / "sweep"
    code = main_in_process(monkeypatch, "-m", "--config-dir", str(tmp_path / "conf"), f"hydra.sweep.dir={sweep}",
                          *overrides)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert what in lines[0] and hint in lines[0], lines[0]
    assert not sweep.exists()


def test_sweep_into_an_earlier_sweeps_directory_is_refused(tmp_path, monkeypatch, capsys):
    sweep = tmp_path / "sweep"
    (sweep / "0" / "checkpoints").mkdir(parents=True)
    (sweep / "0" / "checkpoints" / "last.pt").write_bytes(b"earlier run")
    code = main_in_process(monkeypatch, "-m", f"hydra.sweep.dir={sweep}", "hparams_search=optuna")
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and f"hydra.sweep.dir={sweep} already holds" in lines[0], lines
    assert not (sweep / "optuna.db").exists()
    assert (sweep / "0" / "checkpoints" / "last.pt").read_bytes() == b"earlier run"


def test_launcher_and_search_configs_compose():
    """The slurm launcher extends the submitit plugin's schema; the Optuna space names keys the config has."""
    from hydra import compose, initialize_config_dir

    from diffusion.app.sweep_checks import check_swept_keys

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", ["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], return_hydra_config=True)
        launcher = cfg.hydra.launcher
        assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
        assert (launcher.partition, launcher.gpus_per_node, launcher.tasks_per_node) == ("gpu", 1, 1)
        assert launcher.max_num_timeout > 0 and launcher.timeout_min > 0 and launcher.mem_gb > 0

        cfg = compose("config", ["hparams_search=optuna"], return_hydra_config=True)
        sweeper = cfg.hydra.sweeper
        assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "minimize"
        assert sweeper.sampler._target_.endswith("TPESampler") and sweeper.sampler.seed is not None
        assert sweeper.storage.startswith("sqlite:///") and sweeper.study_name
        assert set(sweeper.params) == {"trainer.lr", "schedule", "trainer.ema_decay"}
        check_swept_keys(cfg)

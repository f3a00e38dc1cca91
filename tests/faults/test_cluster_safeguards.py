"""Cluster safeguards through ``run.py``, with real processes and files: one writer per run directory,
a full disk during training, the thread budget's reason line, and an Optuna search that prunes a hopeless trial."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time

from pathlib import Path

import pytest
from runs import ONE_EPOCH_MOONS, ROOT, TINY_MOONS, child_env, main_in_process, run_py, tree_digest
from test_disk_full import FailingOS

import diffusion.storage.atomic as atomic
from diffusion.storage import checkpoint
from diffusion.storage.file_manager import FileManager, load_checkpoint
from diffusion.storage.run_lock import proc_stat

STEPS_PER_EPOCH = 17  # 540 training points in batches of 32
TINY_MOONS_NO_SCORES = [o for o in TINY_MOONS if not o.startswith(("evaluator.", "sampler."))] + [
    "evaluator=none", "sampler.num_samples=16"]
SMALL_RUN = [*TINY_MOONS_NO_SCORES, "trainer.batch_size=32", "resume=auto"]


def wait_until_stopped(pid: int, timeout: float = 10.0) -> None:
    """Return once every thread of ``pid`` is stopped (state T in /proc/<thread id>/stat)."""
    def running(task: Path) -> bool:
        stat = proc_stat(int(task.name))  # None: a thread that ended meanwhile
        return stat is not None and stat[0] not in "tT"

    deadline = time.monotonic() + timeout
    while any(running(task) for task in Path(f"/proc/{pid}/task").iterdir()):
        assert time.monotonic() < deadline, f"pid {pid} did not stop within {timeout} s of SIGSTOP"
        time.sleep(0.01)


def test_a_second_process_on_a_live_run_is_refused_in_one_line_and_changes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    first = subprocess.Popen([sys.executable, str(ROOT / "run.py"), f"hydra.run.dir={run_dir}", *SMALL_RUN,
                              "trainer.epochs=1000", "++trainer.checkpoint_every_n_steps=5"],
                             cwd=tmp_path, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "checkpoints" / "last.pt").exists():
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read().decode()[-3000:]
            time.sleep(0.05)
        first.send_signal(signal.SIGSTOP)  # alive, holding the lock, and writing nothing while we compare
        wait_until_stopped(first.pid)  # the signal lands asynchronously: a save may still be writing its .tmp
        before = tree_digest(run_dir)
        second = run_py(tmp_path, f"hydra.run.dir={run_dir}", *SMALL_RUN)
        assert second.returncode == 2, second.stderr[-3000:]
        # (a "machine is busy" warning may come first on a loaded machine: it is printed before the lock is taken)
        lines = [line for line in second.stderr.strip().splitlines() if not line.startswith("warning: ")]
        assert len(lines) == 1 and f"pid {first.pid} on host" in lines[0] and str(run_dir) in lines[0], lines
        assert tree_digest(run_dir) == before
    finally:
        first.kill()
        first.wait()
        first.stderr.close()


def test_a_full_disk_during_training_exits_1_naming_the_file_and_resume_continues(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    args = [f"hydra.run.dir={run_dir}", *SMALL_RUN, "trainer.epochs=3", "++trainer.checkpoint_every_n_steps=4"]
    full_disk = FailingOS(at=40, error=errno.ENOSPC)  # a write, fsync, link, rename or removal a few saves in
    monkeypatch.setattr(atomic, "os", full_disk)
    assert main_in_process(monkeypatch, *args) == 1
    monkeypatch.setattr(atomic, "os", os)
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and "No space left on device" in error, error
    assert str(run_dir / "checkpoints") in error and full_disk.failed is not None
    assert not [p for p in run_dir.rglob("*.tmp")], "a temporary file was left"
    found = FileManager(run_dir).latest_intact()
    assert found.skipped == [] and found.path is not None  # every earlier checkpoint loads
    stopped_at = checkpoint.global_step(found.state)
    assert 0 < stopped_at < 3 * STEPS_PER_EPOCH

    monkeypatch.setenv("DIFFUSION_JOBS_PER_NODE", "2")  # the resumed run also shows the thread budget's reason
    monkeypatch.delenv("OMP_NUM_THREADS")  # (an explicit OpenMP setting would take precedence)
    assert main_in_process(monkeypatch, *args, "num_threads=auto") == 0
    out = capsys.readouterr().out
    assert "num_threads=auto: " in out and "shared by 2 processes at once ($DIFFUSION_JOBS_PER_NODE=2)" in out
    assert f"at epoch {stopped_at // STEPS_PER_EPOCH}, step {stopped_at}" in (run_dir / "train.log").read_text()
    assert checkpoint.global_step(load_checkpoint(run_dir / "checkpoints" / "last.pt")) == 3 * STEPS_PER_EPOCH


@pytest.mark.slow  # about 30 s: three trainings of up to two epochs in one process
def test_an_optuna_search_through_run_py_prunes_a_hopeless_trial(tmp_path):
    pytest.importorskip("optuna", minversion="3.0")
    sweep = tmp_path / "sweep"
    # A hopeless learning rate for some trials; with sampler seed 2 the random start-up proposes 1e-2 first, then
    # 1e-9 twice, so the first trial completes and the pruner (median after one finished trial) stops the others.
    result = run_py(tmp_path, "-m", "hparams_search=optuna", f"hydra.sweep.dir={sweep}", "hydra.sweeper.n_trials=3",
                    "hydra.sweeper.sampler.seed=2", "trainer.lr=choice(1e-2,1e-9)",
                    "optuna_trial.pruner.n_startup_trials=1", "num_threads=1", *TINY_MOONS_NO_SCORES,
                    timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    pruned = [json.loads(p.read_text()) for p in sweep.glob("*/pruned.json")]
    assert pruned, f"no trial was pruned:\n{result.stderr[-3000:]}"
    for marker in pruned:
        run_dir = sweep / str(marker["trial"])
        assert checkpoint.epoch(load_checkpoint(run_dir / "checkpoints" / "last.pt")) == marker["epoch"]
    report = subprocess.run([sys.executable, "-m", "diffusion.sweeps.report", str(sweep)], cwd=tmp_path, env=child_env(),
                            capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr
    rows = [line for line in (sweep / "report.md").read_text().splitlines() if "trainer.lr=" in line]
    assert sum("| pruned |" in row and "trainer.lr=1e-09" in row for row in rows) == len(pruned), rows


def test_resume_reads_the_checkpoint_once(tmp_path, monkeypatch):
    """Resolving resume=auto, the logger's run id and the Trainer's restore share one read of the checkpoint."""
    import diffusion.storage.file_manager as file_manager

    run_dir = tmp_path / "run"
    tiny = [*ONE_EPOCH_MOONS, "evaluator=none", f"hydra.run.dir={run_dir}"]
    assert main_in_process(monkeypatch, *tiny) == 0
    reads: list[str] = []
    original = file_manager.load_checkpoint

    def counting(path, *args, **kwargs):
        reads.append(Path(path).name)
        return original(path, *args, **kwargs)

    monkeypatch.setattr(file_manager, "load_checkpoint", counting)
    monkeypatch.setattr("diffusion.storage.resume.load_checkpoint", counting)
    assert main_in_process(monkeypatch, *tiny, "trainer.epochs=2", "resume=auto") == 0
    assert reads[0] == "last.pt" and reads.count("last.pt") == 1, reads  # then best.pt for the final sampling

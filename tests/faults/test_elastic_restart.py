"""Elastic restart for real: ``torchrun --max-restarts=1`` with 2 gloo processes, one worker SIGKILLed mid-training;
torchrun restarts the group, the new workers continue the newest intact checkpoint of the same run directory with
``resume=auto`` and end bit for bit where an uninterrupted 2-process run ends (each rank resumes its own RNG
streams). The run lock passes from the first group to the second."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from runs import ROOT, child_env
from kill_resume import assert_same_run

from diffusion.storage import checkpoint
from diffusion.storage.file_manager import load_checkpoint

STEPS_PER_EPOCH = 16  # 540 training points in global batches of 32, the last partial one dropped
EPOCHS = 5
ELASTIC_RUN = [
    "experiment=moons_mlp",
    f"trainer.epochs={EPOCHS}",
    "trainer.batch_size=32",
    "trainer.warmup_steps=5",
    "trainer.device=cpu",
    "trainer.progress=false",
    "trainer.log_every_n_steps=1",  # metrics.jsonl shows every step: the kill waits for one
    "++trainer.checkpoint_every_n_steps=3",
    "data.num_samples=600",
    "model.hidden_dim=32",
    "model.num_layers=2",
    "method.num_timesteps=50",
    "sampler.num_samples=16",
    "evaluator=none",
    "resume=auto",
]
CHAOS = random.Random()


class Torchrun:
    """``torchrun --max-restarts=1 --nproc_per_node=2 run.py`` in the background, its output in files."""

    def __init__(self, cwd: Path, run_dir: Path) -> None:
        self.metrics, self.err = run_dir / "metrics.jsonl", cwd / f"torchrun-{run_dir.name}.err"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                   "--max-restarts=1", "--monitor-interval=0.2", str(ROOT / "run.py"), f"hydra.run.dir={run_dir}",
                   *ELASTIC_RUN]
        with open(cwd / f"torchrun-{run_dir.name}.out", "w") as out, open(self.err, "w") as err:
            self.process = subprocess.Popen(command, cwd=cwd, env=child_env(), stdout=out, stderr=err)

    def wait_for_step(self, step: int, timeout: float = 180.0) -> int:
        newest, deadline = -1, time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            if self.metrics.exists():
                lines = self.metrics.read_text().split("\n")[:-1]  # complete lines only
                newest = max((json.loads(line).get("step") or 0 for line in lines), default=-1)
                if newest >= step:
                    return newest
            time.sleep(0.01)
        raise AssertionError(f"no step {step} (newest {newest}):\n{self.stderr()[-3000:]}")

    def worker(self, rank: int, restart: int = 0) -> int:
        """The pid of the worker of ``rank`` in torchrun's ``restart``-th group: a child of the torchrun process
        whose environment says so."""
        for pid in children(self.process.pid):
            environ = process_environ(pid)
            if environ.get("RANK") == str(rank) and environ.get("TORCHELASTIC_RESTART_COUNT") == str(restart):
                return pid
        raise AssertionError(f"no worker of rank {rank} under torchrun pid {self.process.pid}")

    def stderr(self) -> str:
        return self.err.read_text()


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def process_environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted 2-process run."""
    cwd = tmp_path_factory.mktemp("reference")
    run = Torchrun(cwd, cwd / "run")
    assert run.process.wait(timeout=300) == 0, run.stderr()[-3000:]
    last = load_checkpoint(cwd / "run" / "checkpoints" / "last.pt")
    assert checkpoint.global_step(last) == EPOCHS * STEPS_PER_EPOCH
    assert len(last["rank_rng_states"]) == 2  # each rank's streams travel
    return cwd / "run"


@pytest.mark.parametrize("killed_rank", [1, pytest.param(0, marks=pytest.mark.slow)])  # about 50 s each
def test_a_worker_sigkilled_mid_training_is_restarted_and_the_run_ends_bit_for_bit(reference, tmp_path,
                                                                                    killed_rank):
    run_dir = tmp_path / "run"
    run = Torchrun(tmp_path, run_dir)
    target = CHAOS.randint(STEPS_PER_EPOCH // 2, 3 * STEPS_PER_EPOCH)
    run.wait_for_step(target)
    os.kill(run.worker(killed_rank), signal.SIGKILL)
    assert run.process.wait(timeout=300) == 0, run.stderr()[-3000:]
    history = f"rank {killed_rank} SIGKILLed after step {target}"

    log = (run_dir / "train.log").read_text()
    assert "resumed from" in log and str(run_dir / "checkpoints") in log, f"{history}: the restart did not resume"
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["run"], "one run directory"
    assert_same_run(run_dir, reference, history)
    # The lock: the surviving first-group rank 0 releases it as it stops; a killed one leaves a lock with a
    # dead pid that the restarted rank 0 takes over. The finished run leaves none.
    taken_over = "taking over" in run.stderr()
    assert taken_over == (killed_rank == 0), run.stderr()[-3000:]
    assert not (run_dir / "run.lock").exists()


def test_a_checkpoint_of_another_world_size_resumes_with_a_note():
    states = [{"torch": torch.get_rng_state()}, {"torch": torch.get_rng_state()}]
    two_ranks = {"rng_state": states[0], "rank_rng_states": states}
    assert checkpoint.rank_rng_state(two_ranks, 1, 2) == (states[1], None)
    single = {"rng_state": states[0]}  # every single-process and first-version checkpoint
    assert checkpoint.rank_rng_state(single, 0, 1) == (states[0], None)
    state, note = checkpoint.rank_rng_state(single, 1, 2)
    assert state is None and "not bit for bit" in note  # rank 1 is seeded apart from rank 0
    state, note = checkpoint.rank_rng_state(two_ranks, 0, 1)
    assert state is states[0] and "2 process(es) and 1 resume" in note


@pytest.mark.slow  # about 60 s
def test_a_single_process_checkpoint_resumed_by_two_ranks_draws_apart_and_says_so(tmp_path):
    run_dir = tmp_path / "run"
    common = [f"hydra.run.dir={run_dir}", *ELASTIC_RUN, "trainer.batch_size=30"]  # 18 steps an epoch either way
    single = subprocess.run([sys.executable, str(ROOT / "run.py"), *common, "trainer.epochs=1"], cwd=tmp_path,
                            env=child_env(), capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(ROOT / "run.py"), *common, "trainer.epochs=2"], cwd=tmp_path, env=child_env(),
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "random states of 1 process(es) and 2 resume it" in (run_dir / "train.log").read_text()
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert checkpoint.global_step(last) == 2 * 18
    rank0, rank1 = (state["torch"] for state in last["rank_rng_states"])
    assert not torch.equal(rank0, rank1)  # rank 1 was seeded apart, not handed rank 0's stream

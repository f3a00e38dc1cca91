"""The kill/resume harness the fault tests share: a tiny moons run that checkpoints every step, a background
``run.py`` session that can be signalled at any step, and bit-for-bit comparison of two runs' checkpoints."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from runs import ROOT, child_env

from diffusion.storage.file_manager import FileManager, load_checkpoint

STEPS_PER_EPOCH = 17  # 540 training points in batches of 32
EPOCHS = 3
FAULT_RUN = [
    "experiment=moons_mlp",
    f"trainer.epochs={EPOCHS}",
    "trainer.batch_size=32",
    "trainer.warmup_steps=5",
    "trainer.progress=false",
    "trainer.log_every_n_steps=1",  # metrics.jsonl shows every step: the kill waits for one
    "++trainer.checkpoint_every_n_steps=1",
    "checkpoint.save_every_n_epochs=1",
    "data.num_samples=600",
    "model.hidden_dim=32",
    "model.num_layers=2",
    "method.num_timesteps=50",
    "sampler.num_samples=16",
    "evaluator=none",
    "resume=auto",  # also in the uninterrupted run (fresh there), so the stored configs are equal too
]
TIMING_KEYS = ("epoch_seconds", "samples_per_second")  # wall-clock measurements, not training state
CHAOS = random.Random()  # from system entropy: run.py's seed_everything reseeds the global `random` in-process


# --------------------------------------------------------------------------------------------------------
# Running and interrupting run.py
# --------------------------------------------------------------------------------------------------------
class Session:
    """One ``python run.py`` process in the background, its output in files (a full pipe would block it)."""

    def __init__(self, cwd: Path, run_dir: Path, *overrides: str) -> None:
        self.metrics = run_dir / "metrics.jsonl"
        self.offset = self.metrics.stat().st_size if self.metrics.exists() else 0  # earlier sessions' lines
        self.out, self.err = (cwd / f"session-{time.monotonic_ns()}.{name}" for name in ("out", "err"))
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.process = subprocess.Popen(
                [sys.executable, str(ROOT / "run.py"), f"hydra.run.dir={run_dir}", *FAULT_RUN, *overrides],
                cwd=cwd, env=child_env(), stdout=out, stderr=err,
            )

    def wait_for_step(self, step: int, timeout: float = 120.0) -> int:
        """Block until this session logged ``step`` (or exited); returns the newest step it logged."""
        newest, deadline = -1, time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.metrics.exists():
                with open(self.metrics) as handle:
                    handle.seek(self.offset)
                    lines = handle.read().split("\n")[:-1]  # complete lines only
                steps = [json.loads(line).get("step") or 0 for line in lines]
                newest = max(steps, default=-1)
            if newest >= step or self.process.poll() is not None:
                return newest
            time.sleep(0.01)
        self.process.kill()
        raise AssertionError(f"no step {step} within {timeout} s:\n{self.stderr()}")

    def stop(self, sig: signal.Signals) -> int:
        time.sleep(CHAOS.uniform(0.0, 0.03))  # land anywhere in a step: forward, backward, checkpoint write
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=120)

    def stderr(self) -> str:
        return self.err.read_text()


def saved_step(run_dir: Path) -> int:
    path = FileManager(run_dir).latest_intact().path
    return -1 if path is None else load_checkpoint(path)["train_state"]["global_step"]


# --------------------------------------------------------------------------------------------------------
# Comparing runs bit for bit
# --------------------------------------------------------------------------------------------------------
def comparable(state: Any) -> Any:
    """``state`` without the wall-clock timings, tensors as [dtype, shape, raw bytes]."""
    if isinstance(state, torch.Tensor):
        raw = state.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        return [str(state.dtype), list(state.shape), raw]
    if isinstance(state, dict):
        return {k: comparable(v) for k, v in state.items() if k not in TIMING_KEYS}
    if isinstance(state, list | tuple):
        return [comparable(v) for v in state]
    return state


def assert_identical(actual: Any, expected: Any, where: str = "checkpoint") -> None:
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), f"{where}: keys differ"
        for key in expected:
            assert_identical(actual[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{where}: lengths differ"
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_identical(a, e, f"{where}[{i}]")
    else:
        same = actual == expected or (isinstance(expected, float) and np.isnan(expected) and np.isnan(actual))
        assert same, f"{where}: {actual!r} != {expected!r}"


def assert_same_run(run_dir: Path, reference: Path, history: str) -> None:
    """Every checkpoint file of both runs and the final samples are identical (timings aside)."""
    names = sorted(p.name for p in (reference / "checkpoints").glob("*.pt"))
    assert names == sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt")), history
    for name in names:
        assert_identical(comparable(load_checkpoint(run_dir / "checkpoints" / name)),
                         comparable(load_checkpoint(reference / "checkpoints" / name)), f"{history}: {name}")
    assert (run_dir / "samples.npz").read_bytes() == (reference / "samples.npz").read_bytes(), history


def assert_killed_run_resumes(tmp_path: Path, monkeypatch: Any, *overrides: str) -> None:
    """A FAULT_RUN with ``overrides`` SIGKILLed at a random step, then resumed in-process, ends bit for bit as an
    uninterrupted one."""
    from runs import main_in_process

    # The uninterrupted run in this process, the killed one in its own: the resumed run must match a run of another
    # process bit for bit (so no state that only a fresh interpreter has, or only a used one, may steer training).
    assert main_in_process(monkeypatch, f"hydra.run.dir={tmp_path / 'reference'}", *FAULT_RUN, *overrides) == 0
    run_dir = tmp_path / "run"
    session = Session(tmp_path, run_dir, *overrides)
    target = CHAOS.randint(3, EPOCHS * STEPS_PER_EPOCH - 3)
    reached = session.wait_for_step(target)
    assert session.stop(signal.SIGKILL) == -signal.SIGKILL, f"finished before the kill at {target}"
    assert main_in_process(monkeypatch, f"hydra.run.dir={run_dir}", *FAULT_RUN, *overrides) == 0
    assert_same_run(run_dir, tmp_path / "reference", f"SIGKILLed after step {reached}")

"""A task=encode process SIGKILLed part way, then run again into the same folder, keeps the shards it wrote and
ends with the latents an uninterrupted encode writes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from runs import ROOT, child_env, main_in_process
from tiny_autoencoders import save_tiny_vae

from diffusion.data.latents import LatentData


def test_a_killed_encode_continues_where_it_stopped(tmp_path, monkeypatch):
    save_tiny_vae(tmp_path / "vae")
    common = ["task=encode", "autoencoder=sd_vae", f"autoencoder.weights={tmp_path / 'vae'}", "encode.batch_size=4"]
    run_dir = tmp_path / "run"
    with open(tmp_path / "err", "w") as err:
        process = subprocess.Popen([sys.executable, str(ROOT / "run.py"), f"hydra.run.dir={run_dir}", *common,
                                    "encode.shard_size=8"], cwd=tmp_path, env=child_env(), stdout=err, stderr=err)
        deadline = time.monotonic() + 240
        while len(list(run_dir.glob("train_*.npz.sha256"))) < 10 and process.poll() is None:
            assert time.monotonic() < deadline, "no shards within the deadline"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=60) == -signal.SIGKILL, "finished before the kill"
    written = {path.name: path.stat().st_mtime_ns for path in run_dir.glob("train_*.npz")}
    assert 10 <= len(written) < 203 and json.loads((run_dir / "latents.json").read_text())["scale"] is None

    with pytest.warns(UserWarning, match="taking over"):  # the killed process's lock
        assert main_in_process(monkeypatch, f"hydra.run.dir={run_dir}", *common, "encode.shard_size=8") == 0
    assert all((run_dir / name).stat().st_mtime_ns == mtime for name, mtime in written.items())  # kept, not redone
    assert not list(run_dir.glob(".*.tmp")) and not (run_dir / "run.lock").exists()
    reference = tmp_path / "reference"
    assert main_in_process(monkeypatch, f"hydra.run.dir={reference}", *common, "encode.shard_size=2000") == 0
    continued, uninterrupted = LatentData(str(run_dir)).load(), LatentData(str(reference)).load()
    for name in ("train", "val", "train_labels", "val_labels"):
        assert torch.equal(getattr(continued, name), getattr(uninterrupted, name)), name

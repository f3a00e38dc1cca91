"""Test-wide safety: W&B never goes online and writes only inside the test's temporary directory. Every test
process computes on one intra-op thread: tests run side by side (``pytest -n auto``, one worker per core), and two
multi-threaded torch processes on the same cores spin-wait in each other's barriers."""

from __future__ import annotations

import os

import pytest
import torch

os.environ["OMP_NUM_THREADS"] = "1"  # child processes (run.py, torchrun) inherit it
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def offline_wandb(tmp_path_factory, monkeypatch):
    root = tmp_path_factory.mktemp("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(root / name.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")
    # run.py's thread budget follows $OMP_NUM_THREADS: in-process runs stay on one thread like the child processes
    monkeypatch.setenv("OMP_NUM_THREADS", "1")

"""The app's view of a Hydra job is a plain object: the keys a command line sets, and old key names that moved."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from diffusion.app import HydraRun, command_line


def test_keys_are_the_groups_and_keys_the_command_line_sets():
    run = HydraRun(output_dir=Path("out"), overrides=("method=ddim", "+trainer.foo=1", "~sampler.guide", "seed=3"))
    assert run.keys == {"method", "trainer.foo", "sampler.guide", "seed"}


def test_num_threads_typed_under_the_trainer_takes_its_process_wide_key(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["run.py", "trainer.num_threads=1", "trainer.lr=1e-3"])
    with command_line():
        assert sys.argv[1:] == ["num_threads=1", "trainer.lr=1e-3"]


def test_a_busy_machine_is_said_before_training_not_before_a_summary(monkeypatch, capsys):
    """The thread budget's line always; the busy-machine warning only for tasks that train or sample."""
    from omegaconf import OmegaConf

    from diffusion.app import jobs

    monkeypatch.setattr(jobs, "busy_warning", lambda cpus, threads: "the machine is busy (test)")
    threads = torch.get_num_threads()
    try:
        for task, warned in (("train", True), ("sample", True), ("summary", False), ("export", False)):
            jobs.apply_thread_budget(OmegaConf.create({"task": task, "num_threads": 1}), HydraRun(Path("out")))
            out = capsys.readouterr().out
            assert "num_threads" in out and ("warning: the machine is busy (test)" in out) == warned, task
    finally:
        torch.set_num_threads(threads)

"""The app's view of a Hydra job is a plain object: the keys a command line sets, and old key names that moved."""

from __future__ import annotations

import sys
from pathlib import Path

from diffusion.app import HydraRun, command_line


def test_keys_are_the_groups_and_keys_the_command_line_sets():
    run = HydraRun(output_dir=Path("out"), overrides=("method=ddim", "+trainer.foo=1", "~sampler.guide", "seed=3"))
    assert run.keys == {"method", "trainer.foo", "sampler.guide", "seed"}


def test_num_threads_typed_under_the_trainer_takes_its_process_wide_key(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["run.py", "trainer.num_threads=1", "trainer.lr=1e-3"])
    with command_line():
        assert sys.argv[1:] == ["num_threads=1", "trainer.lr=1e-3"]

"""Sampling an earlier run (task=sample | evaluate | posthoc_ema) follows the run's own sampler settings where the
command line leaves them open: scoring a run again draws what the run drew."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from diffusion.app.hydra_run import HydraRun, start_job
from diffusion.app.run_config import follow_run_sampler
from runs import ONE_EPOCH_MOONS, compose_config, main_in_process, ok, run_py


@pytest.fixture(scope="module")
def mnist_run_config():
    """What an ``experiment=mnist`` run records: DPM-Solver++ 20 trailing steps, guidance w = 2, every class."""
    recorded = compose_config("experiment=mnist", "trainer.precision=bf16")
    return OmegaConf.create(OmegaConf.to_container(recorded, resolve=True))  # as config.yaml is read back


def followed(run_cfg, *command: str):
    """This command line's sampler after following the run's: ``task=evaluate run_dir=... <command>``."""
    overrides = ("task=evaluate", "run_dir=somewhere", *command)
    start_job(HydraRun(output_dir=Path("out"), overrides=overrides))
    cfg = compose_config(*overrides)
    follow_run_sampler(cfg, run_cfg)
    return cfg.sampler


def test_the_run_sampler_is_followed_without_sampler_keys(mnist_run_config):
    sampler = followed(mnist_run_config)
    assert (sampler.steps, sampler.timestep_spacing, sampler.guidance_scale) == (20, "trailing", 2.0)
    assert sampler.class_labels == "all" and sampler.precision == "bf16"
    assert sampler.seed == 0 and sampler.num_samples == 100  # this job's seed and count, not the run's


def test_command_line_sampler_keys_win(mnist_run_config):
    sampler = followed(mnist_run_config, "sampler.guidance_scale=3", "trainer.precision=fp32")
    assert sampler.guidance_scale == 3.0 and sampler.precision == "fp32"
    assert sampler.timestep_spacing == "trailing" and sampler.steps == 20  # the rest stays the run's


@pytest.mark.parametrize("choice", ["sampler.solver=heun", "method=ddim", "method.default_solver=ddim"])
def test_a_solver_chosen_here_brings_its_own_steps(mnist_run_config, choice):
    sampler = followed(mnist_run_config, choice)
    assert sampler.steps is None, "20 was the run's step count for DPM-Solver++, not for the solver chosen here"
    assert sampler.guidance_scale == 2.0


def test_a_run_from_before_the_sampler_precision_key_samples_at_its_training_precision(mnist_run_config):
    old = mnist_run_config.copy()
    del old.sampler["precision"]
    assert followed(old).precision == "bf16"


def test_sampling_a_run_again_draws_its_samples(tmp_path, monkeypatch):
    """A run sampled by DDIM in 5 trailing steps: task=sample of it, with no sampler key, draws the same samples."""
    run = tmp_path / "run"
    ok(run_py(tmp_path, *ONE_EPOCH_MOONS, "evaluator=none", "method=ddim", "sampler.steps=5",
              "sampler.timestep_spacing=trailing", f"hydra.run.dir={run}"))
    again = tmp_path / "again"
    # (sampled in this process, the run trained in its own: nothing but the run directory carries over)
    assert main_in_process(monkeypatch, "task=sample", f"run_dir={run}", "sampler.num_samples=16",
                           f"hydra.run.dir={again}") == 0
    np.testing.assert_array_equal(np.load(again / "samples.npz")["samples"], np.load(run / "samples.npz")["samples"])
    other = tmp_path / "other"
    assert main_in_process(monkeypatch, "task=sample", f"run_dir={run}", "sampler.num_samples=16",
                           "sampler.timestep_spacing=leading", f"hydra.run.dir={other}") == 0
    assert not np.allclose(np.load(other / "samples.npz")["samples"], np.load(run / "samples.npz")["samples"])

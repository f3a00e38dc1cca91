"""Run directories written before the method/solver split (tests/fixtures/legacy_runs, see its README.md) still
sample, evaluate, resume and export, and sample the numbers that version drew."""

from __future__ import annotations

import json

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from runs import main_in_process

from diffusion.storage import checkpoint
from diffusion.storage.file_manager import load_checkpoint

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_runs"
KINDS = ("ddpm", "heun", "edm")
# (run, golden file, overrides). The goldens were drawn in fp32 by the earlier version on an AVX-512 CPU. Karras-grid
# solvers and EDM evaluate the same float32 operations as before: bit for bit on that CPU, within 1e-6 where another
# CPU kind's float32 kernels round differently. DDPM and DDIM now step in sigma space, x = x_t / sqrt(abar_t), where
# the old code stepped x_t itself: the same equations in another order (measured <= 2e-6 over 20 steps).
GOLDEN = [
    ("ddpm", "ddpm", [], 1e-5),
    ("ddpm", "ddpm_heun18", ["sampler.solver=heun", "sampler.steps=18"], 1e-6),
    ("ddpm", "ddpm_heun18", ["method=heun", "sampler.steps=18"], 1e-6),
    ("heun", "heun", ["sampler.steps=18"], 1e-6),
    ("heun", "heun_ddim10", ["method=ddim", "sampler.steps=10"], 1e-5),
    ("edm", "edm", [], 1e-6),
]


@pytest.fixture
def legacy(tmp_path: Path) -> Path:
    """A copy of the fixture runs (the tests must never write into tests/fixtures)."""
    return Path(shutil.copytree(LEGACY, tmp_path / "legacy_runs"))


def run_overrides(run_dir: Path) -> list[str]:
    return list(yaml.safe_load((run_dir / "overrides.yaml").read_text()))


@pytest.mark.parametrize(("run", "golden", "overrides", "tolerance"), GOLDEN)
def test_sampling_a_legacy_run_reproduces_its_golden_samples(legacy, tmp_path, monkeypatch, run, golden, overrides,
                                                             tolerance):
    out = tmp_path / "sampled"
    assert main_in_process(monkeypatch, "task=sample", f"run_dir={legacy / run}", f"hydra.run.dir={out}",
                           *overrides) == 0
    samples = np.load(out / "samples.npz")["samples"]
    expected = np.load(legacy / "golden" / f"{golden}.npz")["samples"]
    assert samples.shape == expected.shape
    np.testing.assert_allclose(samples, expected, rtol=0, atol=tolerance)


@pytest.mark.parametrize("run", KINDS)
def test_a_legacy_run_evaluates_resumes_and_exports(legacy, tmp_path, monkeypatch, run):
    run_dir = legacy / run
    evaluated = tmp_path / "evaluated"
    assert main_in_process(monkeypatch, "task=evaluate", f"run_dir={run_dir}", f"hydra.run.dir={evaluated}",
                           "evaluator=points", "evaluator.num_samples=16", "sampler.num_samples=16") == 0
    assert (evaluated / "eval.json").is_file()

    assert main_in_process(monkeypatch, *run_overrides(run_dir), f"resume={run_dir}", "trainer.epochs=3",
                           f"hydra.run.dir={tmp_path / 'resumed'}") == 0
    assert checkpoint.epoch(load_checkpoint(run_dir / "checkpoints" / "last.pt")) == 3

    exported = tmp_path / "exported"
    assert main_in_process(monkeypatch, "task=export", f"run_dir={run_dir}", f"hydra.run.dir={exported}") == 0
    sampled = tmp_path / "from_export"
    assert main_in_process(monkeypatch, "task=sample", f"run_dir={exported / 'weights.safetensors'}",
                           f"hydra.run.dir={sampled}", "sampler.num_samples=16") == 0
    assert np.isfinite(np.load(sampled / "samples.npz")["samples"]).all()


def test_evaluate_without_an_evaluator_scores_with_the_runs_own(legacy, tmp_path, monkeypatch):
    """No ``evaluator=`` or ``data=`` on the command line: the run's own evaluator (points, for a moons run), with
    this command line's ``evaluator.*`` keys on top."""
    out = tmp_path / "evaluated"
    assert main_in_process(monkeypatch, "task=evaluate", f"run_dir={legacy / 'ddpm'}", f"hydra.run.dir={out}",
                           "sampler.num_samples=12", "evaluator.num_samples=12") == 0
    scores = json.loads((out / "eval.json").read_text())
    assert "sliced_wasserstein" in scores and scores["num_samples"] == 12


def test_sampling_a_run_keeps_its_precision_unless_the_command_line_sets_one(legacy, tmp_path, monkeypatch):
    """``precision: auto`` resolves per machine; a run is sampled at the precision it trained at (fp32 here)."""
    for name, given, expected in (("kept", [], "fp32"), ("chosen", ["sampler.precision=bf16"], "bf16")):
        out = tmp_path / name
        assert main_in_process(monkeypatch, "task=sample", f"run_dir={legacy / 'ddpm'}", f"hydra.run.dir={out}",
                               "sampler.num_samples=4", *given) == 0
        assert yaml.safe_load((out / "config.yaml").read_text())["sampler"]["precision"] == expected

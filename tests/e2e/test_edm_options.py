"""EDM-era options through run.py: post-hoc EMA training and the EMA-length sweep, autoguidance from a
checkpoint of the run, and their one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from runs import ONE_EPOCH_MOONS, main_in_process

from diffusion.storage.export import load_exported
from diffusion.storage.file_manager import load_checkpoint

POSTHOC = [*ONE_EPOCH_MOONS, "trainer.epochs=2", "evaluator=none", "trainer.ema=posthoc",
           "trainer.ema_snapshot_every=1", "checkpoint.save_every_n_epochs=1"]


@pytest.fixture(scope="module")
def posthoc_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("posthoc") / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert main_in_process(monkeypatch, f"hydra.run.dir={run_dir}", *POSTHOC) == 0
    return run_dir


def test_posthoc_sweep_reconstructs_the_tracked_ema_and_writes_its_table(posthoc_run, tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    code = main_in_process(monkeypatch, "task=posthoc_ema", f"run_dir={posthoc_run}", "ema.std=[0.05,0.1]",
                           *ONE_EPOCH_MOONS, "evaluator=points", "evaluator.num_samples=16", f"hydra.run.dir={out}")
    assert code == 0
    last = load_checkpoint(posthoc_run / "checkpoints" / "last.pt")
    tracked = last["ema_state_dict"]["averages"][-1]  # the directly tracked std 0.10
    rebuilt, config = load_exported(out / "ema_std_0.1.safetensors")
    assert config["trainer"]["ema"] == "posthoc"
    for name, weight in tracked.items():
        error = (rebuilt[name] - weight).norm() / weight.norm().clamp_min(1e-12)
        assert error < 1e-2, f"{name}: relative error {error:.2e}"
    table = (out / "posthoc_ema.md").read_text().splitlines()
    assert len(table) == 2 + 2 and table[2].startswith("| 0.05 |") and (out / "posthoc_ema.png").is_file()
    assert (out / "std_0.05" / "eval.json").is_file()


def test_posthoc_sweep_scores_with_the_runs_own_evaluator(tmp_path, monkeypatch):
    """No data= or evaluator= on the command line: the run's evaluator (points, for moons), as task=evaluate does,
    not the default data's (digits)."""
    run_dir = tmp_path / "run"
    own = [o for o in POSTHOC if o != "evaluator=none"]
    assert main_in_process(monkeypatch, f"hydra.run.dir={run_dir}", *own, "evaluator.num_samples=16") == 0
    out = tmp_path / "sweep"
    assert main_in_process(monkeypatch, "task=posthoc_ema", f"run_dir={run_dir}", "ema.std=[0.05]",
                           f"hydra.run.dir={out}") == 0
    scores = json.loads((out / "std_0.05" / "eval.json").read_text())
    assert "sliced_wasserstein" in scores and scores["num_samples"] == 16, scores


def test_autoguidance_from_an_earlier_checkpoint_of_the_run(posthoc_run, tmp_path, monkeypatch):
    samples = {}
    for scale in (1, 3):
        out = tmp_path / f"w{scale}"
        assert main_in_process(monkeypatch, "task=sample", f"run_dir={posthoc_run}", f"hydra.run.dir={out}",
                               "sampler.guide=epoch_0001", f"sampler.guide_scale={scale}") == 0
        samples[scale] = np.load(out / "samples.npz")["samples"]
    plain = tmp_path / "plain"
    assert main_in_process(monkeypatch, "task=sample", f"run_dir={posthoc_run}", f"hydra.run.dir={plain}") == 0
    np.testing.assert_array_equal(samples[1], np.load(plain / "samples.npz")["samples"])  # w = 1: main model alone
    assert not np.allclose(samples[3], samples[1]), "a guide at w = 3 changes the samples"


@pytest.mark.parametrize(("overrides", "key"), [
    (["trainer.ema=posthoc"], "trainer.ema_snapshot_every"),
    (["trainer.ema=swa"], "trainer.ema"),
    (["sampler.guide=/no/such/run"], "sampler.guide"),
])
def test_bad_edm_options_are_one_line(tmp_path, monkeypatch, capsys, overrides, key):
    code = main_in_process(monkeypatch, f"hydra.run.dir={tmp_path / 'run'}", *ONE_EPOCH_MOONS, "evaluator=none",
                           *overrides)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and key in err, err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_guide_with_another_prediction_target_is_refused(posthoc_run, tmp_path, monkeypatch, capsys):
    other = tmp_path / "x0"
    assert main_in_process(monkeypatch, f"hydra.run.dir={other}", *ONE_EPOCH_MOONS, "evaluator=none",
                           "method.prediction=x0") == 0
    capsys.readouterr()
    code = main_in_process(monkeypatch, "task=sample", f"run_dir={posthoc_run}", f"sampler.guide={other}",
                           f"hydra.run.dir={tmp_path / 'out'}")
    err = capsys.readouterr().err.strip()
    assert code == 2 and "sampler.guide" in err and "x0" in err, err


@pytest.mark.parametrize("method", ["dpmpp_2m_karras", "euler"])
def test_an_edm_run_samples_with_the_other_sigma_space_solvers(tmp_path, monkeypatch, method):
    run_dir = tmp_path / "edm"
    assert main_in_process(monkeypatch, *ONE_EPOCH_MOONS, "evaluator=none", "method=edm",
                           f"hydra.run.dir={run_dir}") == 0
    out = tmp_path / method
    assert main_in_process(monkeypatch, "task=sample", f"run_dir={run_dir}", f"method={method}", "sampler.steps=3",
                           f"hydra.run.dir={out}") == 0
    assert np.isfinite(np.load(out / "samples.npz")["samples"]).all()

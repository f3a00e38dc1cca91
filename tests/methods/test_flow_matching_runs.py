"""``run.py method=flow_matching`` end to end: a tiny run trains, samples and scores; dopri5's counted NFE reaches
eval.json; post-hoc EMA reconstruction and autoguidance from an earlier checkpoint work on a flow; a bad key is one
line and writes nothing; a SIGKILLed run resumes bit for bit (the kill/resume harness in tests/kill_resume.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from kill_resume import assert_killed_run_resumes
from runs import ONE_EPOCH_MOONS, main_in_process

FLOW = ["method=flow_matching", "method.coupling=ot"]


def test_a_flow_run_trains_samples_and_scores_and_dopri5_reports_its_nfe(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    assert main_in_process(monkeypatch, *ONE_EPOCH_MOONS, *FLOW, "evaluator=points", "evaluator.num_samples=16",
                           f"hydra.run.dir={run_dir}") == 0
    scored = json.loads((run_dir / "eval.json").read_text())
    assert scored["sampler"] == "flow_matching" and scored["nfe"] == scored["steps"] == 16
    evaluated = tmp_path / "evaluated"
    assert main_in_process(monkeypatch, "task=evaluate", f"run_dir={run_dir}", "evaluator=points",
                           "evaluator.num_samples=16", "sampler.solver=dopri5", "sampler.atol=1e-4", "sampler.rtol=1e-4",
                           f"hydra.run.dir={evaluated}") == 0
    adaptive = json.loads((evaluated / "eval.json").read_text())
    assert adaptive["sampler"] == "flow_matching_dopri5" and adaptive["nfe"] >= 6  # at least one dopri5 step
    assert f"{adaptive['nfe']} NFE" in (evaluated / "train.log").read_text()


@pytest.fixture(scope="module")
def posthoc_flow_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("posthoc_flow") / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert main_in_process(monkeypatch, f"hydra.run.dir={run_dir}", *ONE_EPOCH_MOONS, *FLOW, "trainer.epochs=2",
                               "evaluator=none", "trainer.ema=posthoc", "trainer.ema_snapshot_every=1",
                               "checkpoint.save_every_n_epochs=1") == 0
    return run_dir


def test_posthoc_ema_reconstructs_a_flow_runs_ema(posthoc_flow_run, tmp_path, monkeypatch):
    sweep = tmp_path / "sweep"
    assert main_in_process(monkeypatch, "task=posthoc_ema", f"run_dir={posthoc_flow_run}", "ema.std=[0.1]",
                           "evaluator=none", f"hydra.run.dir={sweep}") == 0
    assert (sweep / "ema_std_0.1.safetensors").is_file()


# The guide's prediction is checked against the sampled run's method, not the command line's default method.
def test_autoguidance_by_a_shorter_ema_of_a_flow_run(posthoc_flow_run, tmp_path, monkeypatch):
    assert main_in_process(monkeypatch, "task=posthoc_ema", f"run_dir={posthoc_flow_run}", "ema.std=[0.02]",
                           "evaluator=none", f"hydra.run.dir={tmp_path / 'ema'}") == 0
    guide = f"sampler.guide={tmp_path / 'ema' / 'ema_std_0.02.safetensors'}"
    runs = {"plain": [], "w1": [guide, "sampler.guide_scale=1"], "w3": [guide, "sampler.guide_scale=3"]}
    samples = {}
    for name, extra in runs.items():
        assert main_in_process(monkeypatch, "task=sample", f"run_dir={posthoc_flow_run}",
                               f"hydra.run.dir={tmp_path / name}", *extra) == 0
        samples[name] = np.load(tmp_path / name / "samples.npz")["samples"]
    np.testing.assert_array_equal(samples["w1"], samples["plain"])  # w = 1: the main model alone
    assert not np.allclose(samples["w3"], samples["w1"])


def test_sampling_a_flow_run_takes_a_new_shift_and_records_what_it_sampled(posthoc_flow_run, tmp_path, monkeypatch,
                                                                           capsys):
    """method.shift moves only the sampling grid: a command line's shift reaches the run's method (either way of
    writing it), and the job's config.yaml records the run's method, network and data, not the command's defaults."""
    samples = {}
    for name, extra in {"as_trained": [], "preset": ["method=flow_matching", "method.shift=3"],
                        "added": ["+method.shift=3"]}.items():
        assert main_in_process(monkeypatch, "task=sample", f"run_dir={posthoc_flow_run}", "sampler.solver=heun",
                               "sampler.steps=4", f"hydra.run.dir={tmp_path / name}", *extra) == 0
        samples[name] = np.load(tmp_path / name / "samples.npz")["samples"]
    np.testing.assert_array_equal(samples["preset"], samples["added"])
    assert not np.allclose(samples["preset"], samples["as_trained"])
    recorded = yaml.safe_load((tmp_path / "preset" / "config.yaml").read_text())
    assert recorded["method"]["_target_"] == "diffusion.methods.FlowMatching" and recorded["method"]["shift"] == 3
    assert recorded["method"]["coupling"] == "ot" and recorded["method"]["default_solver"] == "euler"
    assert recorded["model"]["_target_"] == "diffusion.models.MLP" and recorded["model"]["hidden_dim"] == 16
    assert recorded["data"]["_target_"] == "diffusion.data.MoonsData" and recorded["task"] == "sample"
    assert recorded["evaluator"] == {"_target_": "diffusion.evaluation.NoneEvaluator"}
    assert recorded["sampler"]["solver"] == "heun" and recorded["sampler"]["steps"] == 4


def test_a_shift_for_a_gaussian_run_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "gaussian"
    assert main_in_process(monkeypatch, *ONE_EPOCH_MOONS, "evaluator=none", f"hydra.run.dir={run_dir}") == 0
    capsys.readouterr()
    out = tmp_path / "shifted"
    assert main_in_process(monkeypatch, "task=sample", f"run_dir={run_dir}", "+method.shift=3",
                           f"hydra.run.dir={out}") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "method.shift" in err[0] and "GaussianDiffusion" in err[0] and not out.exists()


@pytest.mark.parametrize(("override", "key"), [("method.path=straight", "method.path"),
                                             ("method.shift=0", "method.shift"), ("sampler.solver=rk4", "sampler.solver"),
                                             ("sampler.steps=0", "sampler.steps")])
def test_a_bad_flow_setting_is_one_line_and_writes_nothing(override, key, tmp_path, monkeypatch, capsys):
    code = main_in_process(monkeypatch, *ONE_EPOCH_MOONS, "method=flow_matching", override,
                           f"hydra.run.dir={tmp_path / 'run'}")
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1 and error.startswith("error: ") and key in error, error
    assert not (tmp_path / "run").exists()


def test_a_killed_flow_run_resumes_bit_for_bit(tmp_path, monkeypatch):
    assert_killed_run_resumes(tmp_path, monkeypatch, *FLOW)

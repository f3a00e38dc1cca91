"""End-to-end: ``run.py`` in a temporary directory, as a user runs it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from runs import TINY_DIGITS, TINY_MOONS, main_in_process, ok, run_py

from diffusion.storage.file_manager import load_checkpoint


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    """One tiny digits run shared by the tests that inspect its outputs."""
    cwd = tmp_path_factory.mktemp("digits")
    run_dir = cwd / "run"
    ok(run_py(cwd, f"hydra.run.dir={run_dir}", *TINY_DIGITS))
    return run_dir


def test_digits_run_writes_everything(digits_run):
    for name in ("config.yaml", "overrides.yaml", "train.log", "metrics.jsonl", "loss_curve.png", "eval.json",
                 "samples.png", "samples.npz", "trajectory.png", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (digits_run / name).is_file(), name
    samples = np.load(digits_run / "samples.npz")["samples"]
    assert samples.shape == (8, 1, 8, 8) and samples.dtype == np.float32
    assert samples.min() >= -1.0 and samples.max() <= 1.0  # clip_denoised keeps the data range
    ckpt = load_checkpoint(digits_run / "checkpoints" / "last.pt")
    assert ckpt["train_state"]["epoch"] == 2 and len(ckpt["train_state"]["train_losses"]) == 2 == len(ckpt["train_state"]["val_losses"])
    assert ckpt["config"]["trainer"]["epochs"] == 2
    epochs = [json.loads(line) for line in (digits_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in epochs if "epoch" in r] == [1, 2]


def test_default_outputs_layout(tmp_path, monkeypatch):
    """Without hydra.run.dir, runs land in outputs/<date>/<time>/ of the working directory."""
    monkeypatch.chdir(tmp_path)
    assert main_in_process(monkeypatch, *TINY_MOONS, "trainer.epochs=1") == 0
    runs = list((tmp_path / "outputs").glob("*/*/checkpoints/last.pt"))
    assert len(runs) == 1


def test_moons_run_samples_points(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    assert main_in_process(monkeypatch, f"hydra.run.dir={run_dir}", *TINY_MOONS) == 0
    assert "run directory" in capsys.readouterr().out
    samples = np.load(run_dir / "samples.npz")["samples"]
    assert samples.shape == (64, 2) and np.isfinite(samples).all()
    assert (run_dir / "samples.png").is_file()


def test_resume_continues_step_count_and_histories(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    assert main_in_process(monkeypatch, f"hydra.run.dir={run_dir}", *TINY_MOONS) == 0
    first = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    capsys.readouterr()
    assert main_in_process(monkeypatch, f"hydra.run.dir={tmp_path / 'other'}", *TINY_MOONS, "trainer.epochs=3",
                           f"resume={run_dir}") == 0
    assert "resumed from" in capsys.readouterr().out
    second = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert second["train_state"]["epoch"] == 3
    assert second["train_state"]["global_step"] == first["train_state"]["global_step"] * 3 // 2
    assert second["train_state"]["train_losses"][:2] == first["train_state"]["train_losses"]
    assert second["train_state"]["val_losses"][:2] == first["train_state"]["val_losses"]
    assert len(second["train_state"]["val_losses"]) == 3
    assert not (tmp_path / "other").exists(), "a resumed run writes into its own directory"
    # resume=auto on the same run directory continues it too.
    assert main_in_process(monkeypatch, f"hydra.run.dir={run_dir}", *TINY_MOONS, "trainer.epochs=4", "resume=auto") == 0
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["train_state"]["epoch"] == 4


def test_new_run_refuses_to_overwrite(digits_run, monkeypatch, capsys):
    before = (digits_run / "checkpoints" / "last.pt").read_bytes()
    assert main_in_process(monkeypatch, f"hydra.run.dir={digits_run}", *TINY_DIGITS) == 2
    assert "resume=auto" in capsys.readouterr().err
    assert (digits_run / "checkpoints" / "last.pt").read_bytes() == before


def test_sample_task_uses_the_best_checkpoint(digits_run, tmp_path, monkeypatch):
    # Make best and last differ: last gets perturbed weights, so samples reveal which one was loaded.
    ckpt_dir = digits_run / "checkpoints"
    best = load_checkpoint(ckpt_dir / "best.pt")
    last = load_checkpoint(ckpt_dir / "last.pt")
    for tensor in last["ema_state_dict"]["shadow"].values():
        if tensor.is_floating_point():
            tensor.add_(0.5)
    backup = (ckpt_dir / "last.pt").read_bytes()
    torch.save(last, ckpt_dir / "last.pt")
    try:
        out = tmp_path / "sample"
        args = ["task=sample", f"run_dir={digits_run}", f"hydra.run.dir={out}", "sampler.num_samples=8",
                "evaluator.num_samples=8", "sampler.precision=fp32"]
        assert main_in_process(monkeypatch, *args) == 0
        sampled = np.load(out / "samples.npz")["samples"]
        from_train = np.load(digits_run / "samples.npz")["samples"]
        # Same seed, same best checkpoint: the samples the training run wrote.
        np.testing.assert_allclose(sampled, from_train, atol=1e-5)
        assert (out / "samples.png").is_file() and yaml.safe_load((out / "config.yaml").read_text())["task"] == "sample"
        assert best["train_state"]["epoch"] >= 1
        # A sampling method chosen on the command line replaces the run's, keeping its trained schedule.
        ddim = tmp_path / "ddim"
        assert main_in_process(monkeypatch, *args[:2], f"hydra.run.dir={ddim}", "sampler.num_samples=8",
                               "method=ddim", "sampler.steps=10") == 0
        assert np.load(ddim / "samples.npz")["samples"].shape == (8, 1, 8, 8)
    finally:
        (ckpt_dir / "last.pt").write_bytes(backup)


def test_evaluate_task_writes_eval_json(digits_run, tmp_path, monkeypatch):
    out = tmp_path / "evaluate"
    assert main_in_process(monkeypatch, "task=evaluate", f"run_dir={digits_run}", f"hydra.run.dir={out}",
                           "evaluator.num_samples=16", "method=ddim", "sampler.steps=5",
                           "evaluator.sampler_steps=[2,5]") == 0
    report = json.loads((out / "eval.json").read_text())
    for metric in ("fd", "kid", "class_coverage", "class_kl", "confidence"):
        assert set(report[metric]) >= {"value", "floor"} and math.isfinite(report[metric]["value"])
    assert report["num_samples"] == 16 and report["sampler"] == "ddim" and report["steps"] == 5
    assert report["seconds_per_sample"] > 0
    assert [row["steps"] for row in report["sampler_steps"]] == [2, 5]
    assert (out / "eval_steps.md").read_text().count("| ddim |") == 2
    assert not (digits_run / "eval_steps.md").exists(), "the earlier run is left untouched"


BAD_INPUTS = [
    (["trainer.lr=0"], "trainer.lr"),
    (["trainer.lr=abc"], "trainer.lr"),
    (["trainer.epochs=0"], "trainer.epochs"),
    (["method.num_timesteps=0"], "method.num_timesteps"),
    (["method.prediction=score"], "method.prediction"),
    (["data=image_folder"], "data.root"),
    (["data=image_folder", "data.root=/no/such/dir"], "data.root"),
    (["data.image_size=9", "model.channel_mults=[1,2]"], "data.image_size"),  # (the U-Net sizes itself by default)
    (["data=moons"], "model=mlp"),
    (["task=sample"], "run_dir"),
    (["run_dir=/no/such/run"], "run_dir is read only by task="),  # task=train reads no run_dir: not dropped
    (["tune.steps=5"], "tune.steps is read only by task=tune"),
    (["task=sample", "run_dir=/no/such/run", "reflow.num_pairs=8"], "reflow.num_pairs is read only by task=reflow"),
    (["encode.batch_size=8"], "encode.batch_size is read only by task=encode"),
    (["task=evaluate", "run_dir=/no/such/run", "ema.std=[0.1]"], "ema.std is read only by task=posthoc_ema"),
    (["task=sample", "run_dir=/no/such/run"], "run_dir"),
    (["resume=/no/such/run"], "resume"),
    (["task=paint"], "task"),
    (["trainer.monitor=fd"], "evaluator.every_n_epochs"),
    (["trainer.monitor=fid", "evaluator.every_n_epochs=1"], "class_coverage"),  # lists what digits computes
    (["experiment=moons_mlp", "trainer.monitor=fd", "evaluator.every_n_epochs=1"], "sliced_wasserstein"),
]


@pytest.mark.parametrize(("overrides", "key"), BAD_INPUTS, ids=[" ".join(o) for o, _ in BAD_INPUTS])
def test_bad_input_is_one_clear_line(tmp_path, monkeypatch, capsys, overrides, key):
    run_dir = tmp_path / "run"
    assert main_in_process(monkeypatch, f"hydra.run.dir={run_dir}", *overrides) == 2
    stderr = capsys.readouterr().err
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and key in lines[0], stderr
    assert not run_dir.exists(), "nothing may be written for a bad input"


def test_bad_input_from_the_shell_exits_2_without_traceback(tmp_path):
    result = run_py(tmp_path, f"hydra.run.dir={tmp_path / 'run'}", "trainer.lr=-1")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: trainer.lr must be in (0.0, inf), got -1"
    ], result.stderr


def test_empty_image_folder_is_reported(tmp_path, monkeypatch, capsys):
    (tmp_path / "empty").mkdir()
    assert main_in_process(monkeypatch, f"hydra.run.dir={tmp_path / 'run'}", "data=image_folder",
                           f"data.root={tmp_path / 'empty'}") == 2
    assert "data.root" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_unknown_group_option_lists_the_options(tmp_path, monkeypatch, capsys):
    assert main_in_process(monkeypatch, f"hydra.run.dir={tmp_path / 'run'}", "method=ddpx") != 0
    stderr = capsys.readouterr().err
    assert "ddim" in stderr and "ddpm" in stderr  # Hydra's message lists the available options


def test_monitor_an_evaluation_metric(tmp_path, monkeypatch):
    """trainer.monitor=<metric> with evaluations during training: best.pt is the epoch with the lowest value."""
    run_dir = tmp_path / "run"
    assert main_in_process(monkeypatch, f"hydra.run.dir={run_dir}", *TINY_MOONS, "trainer.epochs=3",
                           "evaluator.every_n_epochs=1", "trainer.monitor=sliced_wasserstein") == 0
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    values = {r["epoch"]: r["sliced_wasserstein"] for r in epochs if "sliced_wasserstein" in r and "epoch" in r}
    assert sorted(values) == [1, 2, 3]
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert best["train_state"]["epoch"] == min(values, key=values.get)


def test_sampling_takes_clip_denoised_from_the_command_line(digits_run, tmp_path, monkeypatch):
    out = tmp_path / "noclip"
    assert main_in_process(monkeypatch, "task=sample", f"run_dir={digits_run}", f"hydra.run.dir={out}",
                           "sampler.num_samples=8", "evaluator.num_samples=8", "sampler.precision=fp32",
                           "method.clip_denoised=false") == 0
    samples = np.load(out / "samples.npz")["samples"]
    # Same weights, seed and precision as the run's own (clipped) samples: only the clipping differs.
    clipped = np.load(digits_run / "samples.npz")["samples"]
    assert not np.allclose(samples, clipped, atol=1e-5)
    assert np.abs(samples).max() > 1.0, "without clipping a tiny model's samples leave [-1, 1]"

"""``run.py task=reflow run_dir=<flow run>`` end to end: the teacher's ODE pairs are drawn into the new run's
``reflow_pairs/``, the new flow starts from the teacher's weights and trains on them through the Trainer, and the
reflowed run samples and evaluates like any other; a teacher that is not a flow and a damaged pair file are one line
naming the key or file, exit 2, nothing written or overwritten."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from runs import ONE_EPOCH_MOONS, main_in_process, tree_digest

from diffusion.storage import checkpoint
from diffusion.storage.file_manager import load_checkpoint
from diffusion.tasks.reflow import PAIRS_DIR

REFLOW = ["task=reflow", "reflow.num_pairs=48", "reflow.chunk_size=32", "trainer.epochs=1", "trainer.progress=false",
          "trainer.precision=fp32", "trainer.batch_size=16", "sampler.num_samples=16", "sampler.steps=4"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("teacher") / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert main_in_process(monkeypatch, *ONE_EPOCH_MOONS, "method=flow_matching", "method.coupling=ot",
                               "evaluator=points", "evaluator.num_samples=16", f"hydra.run.dir={run_dir}") == 0
    return run_dir


@pytest.fixture(scope="module")
def reflowed(teacher, tmp_path_factory) -> Path:
    """A reflow whose learning rate is too small to move the weights: its EMA is the teacher's."""
    run_dir = tmp_path_factory.mktemp("reflowed") / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert main_in_process(monkeypatch, *REFLOW, f"run_dir={teacher}", "trainer.lr=1e-12",
                               f"hydra.run.dir={run_dir}") == 0
    return run_dir


def test_reflow_draws_pairs_and_trains_from_the_teachers_weights(teacher, reflowed):
    for name in ("pairs.json", "pairs_00000000.npz", "pairs_00000000.npz.sha256", "pairs_00000032.npz"):
        assert (reflowed / PAIRS_DIR / name).is_file(), name
    config = (reflowed / "config.yaml").read_text()
    assert "PairedFlowMatching" in config and "coupling: independent" in config  # the teacher trained with ot
    start = checkpoint.ema_weights(load_checkpoint(teacher / "checkpoints" / "best.pt"))
    trained = checkpoint.ema_weights(load_checkpoint(reflowed / "checkpoints" / "best.pt"))
    for name, weight in start.items():
        torch.testing.assert_close(trained[name], weight, atol=1e-6, rtol=0)
    scored = json.loads((reflowed / "eval.json").read_text())
    assert scored["sampler"] == "flow_matching" and scored["steps"] == 4  # scored against the real moons


def test_a_reflowed_run_evaluates_like_any_other(reflowed, tmp_path, monkeypatch):
    out = tmp_path / "evaluated"
    assert main_in_process(monkeypatch, "task=evaluate", f"run_dir={reflowed}", "evaluator.straightness=true",
                           "evaluator.straightness_samples=8", "evaluator.straightness_steps=4", "sampler.steps=1",
                           f"hydra.run.dir={out}") == 0
    scored = json.loads((out / "eval.json").read_text())
    assert scored["steps"] == 1 and scored["straightness"]["value"] >= 0


def test_a_teacher_that_is_not_a_flow_or_a_damaged_pair_file_is_one_line(teacher, reflowed, tmp_path, monkeypatch,
                                                                           capsys):
    ddpm = tmp_path / "ddpm"
    assert main_in_process(monkeypatch, *ONE_EPOCH_MOONS, "evaluator=none", f"hydra.run.dir={ddpm}") == 0
    capsys.readouterr()
    assert main_in_process(monkeypatch, *REFLOW, f"run_dir={ddpm}", f"hydra.run.dir={tmp_path / 'new'}") == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and f"run_dir={ddpm}" in error[0] and "needs a flow run" in error[0], error
    assert not (tmp_path / "new").exists()

    chunk = reflowed / PAIRS_DIR / "pairs_00000032.npz"
    payload = bytearray(chunk.read_bytes())
    payload[-10] ^= 0xFF
    chunk.write_bytes(bytes(payload))
    before = tree_digest(reflowed)
    assert main_in_process(monkeypatch, *REFLOW, f"run_dir={teacher}", "resume=auto",
                           f"hydra.run.dir={reflowed}") == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "pairs_00000032.npz is damaged" in error[0], error
    assert tree_digest(reflowed) == before

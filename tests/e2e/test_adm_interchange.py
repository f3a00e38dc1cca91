"""Samples cross to and from the ADM evaluation suite: ``task=sample sampler.format=adm`` writes its ``.npz``, and
``task=evaluate run_dir=<.npz>`` scores a file made elsewhere into a new output folder."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from runs import TINY_DIGITS, main_in_process, ok, run_py

from diffusion.data.digits import DigitsData
from diffusion.evaluation.digits import DigitsEvaluator

# Few floor draws, no bootstrap: the scores' plumbing is under test here, not their error bars.
QUICK_SCORES = ["evaluator.num_samples=16", "evaluator.floor_draws=8", "evaluator.bootstrap=0"]


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
    """A one-epoch class-conditional digits run (no scoring), its 16 final samples in samples.npz."""
    cwd = tmp_path_factory.mktemp("conditional")
    tiny = [o for o in TINY_DIGITS if not o.startswith(("evaluator.", "sampler."))]
    ok(run_py(cwd, f"hydra.run.dir={cwd / 'run'}", *tiny, "trainer.epochs=1", "model.num_classes=10", "evaluator=none",
              "sampler.num_samples=16"))
    return cwd / "run"


def test_sample_writes_the_adm_npz_and_evaluate_scores_it(conditional_run, tmp_path, monkeypatch):
    assert main_in_process(monkeypatch, "task=sample", f"run_dir={conditional_run}", "sampler.num_samples=16",
                           f"hydra.run.dir={tmp_path / 'adm'}", "sampler.format=adm") == 0
    path = tmp_path / "adm" / "samples_16x8x8x1.npz"
    assert not (tmp_path / "adm" / "samples.npz").exists()
    with np.load(path) as archive:
        assert archive.files == ["arr_0", "arr_1"]  # images, and the labels of a class-conditional model
        images, labels = archive["arr_0"], archive["arr_1"]
    assert images.dtype == np.uint8 and images.shape == (16, 8, 8, 1)
    with np.load(conditional_run / "samples.npz") as own:  # same seed, same checkpoint: the run's samples, as pixels
        pixels = np.round((np.clip(own["samples"], -1, 1) + 1) * 127.5).transpose(0, 2, 3, 1)
        assert np.abs(images - pixels).max() <= 1  # a last-digit float difference may round the other way
        np.testing.assert_array_equal(labels, own["labels"])
    out = tmp_path / "scored"
    assert main_in_process(monkeypatch, "task=evaluate", f"run_dir={path}", f"hydra.run.dir={out}",
                           *QUICK_SCORES) == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["num_samples"] == 16 and report["samples_file"] == str(path.resolve())
    assert all(math.isfinite(report[name]["value"]) for name in ("fd", "precision", "recall", "memorization"))


def test_evaluate_scores_a_file_made_elsewhere_like_the_evaluator_does(tmp_path, monkeypatch, capsys):
    """A file made as ADM's image_sample.py makes it (np.savez(path, arr, label_arr), uint8 NHWC) from held-out
    digits: its scores are those of the evaluator on the same images (the default digits evaluator: with precision,
    recall and memorization, each printed beside its floor), and nothing is written beside it."""
    data = DigitsData()
    split = data.load()
    pixels = ((split.val[:24] + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    foreign = tmp_path / "elsewhere"
    foreign.mkdir()
    np.savez(foreign / "samples_24x8x8x1.npz", pixels, split.val_labels[:24].numpy())
    out = tmp_path / "scored"
    assert main_in_process(monkeypatch, "task=evaluate", f"run_dir={foreign / 'samples_24x8x8x1.npz'}",
                           f"hydra.run.dir={out}", "evaluator.num_samples=24", "evaluator.floor_draws=8",
                           "evaluator.bootstrap=0") == 0
    assert sorted(p.name for p in foreign.iterdir()) == ["samples_24x8x8x1.npz"]
    printed = capsys.readouterr().out
    for line in ("precision: ", "recall: ", "memorization: "):
        assert any(row.startswith(line) and "real" in row for row in printed.splitlines()), line
    assert {"eval.json", "config.yaml", "samples.png", "train.log"} <= {p.name for p in out.iterdir()}
    report = json.loads((out / "eval.json").read_text())
    evaluator = DigitsEvaluator(num_samples=24, floor_draws=8, bootstrap=0, neighbour_metrics=True)
    evaluator.prepare(data)
    expected = evaluator.evaluate(data.prepare_batch(torch.from_numpy(pixels).permute(0, 3, 1, 2)))
    for name, metric in expected.items():
        # float32 features of other batches: equal to round-off
        assert report[name]["value"] == pytest.approx(metric.value, rel=1e-6, abs=1e-9), name
        assert report[name]["floor"] == pytest.approx(metric.floor, rel=1e-6, abs=1e-9), name


BAD = {
    "float pixels": (lambda p: np.savez(p, np.zeros((4, 8, 8, 1), np.float32)), "uint8"),
    "wrong size": (lambda p: np.savez(p, np.zeros((4, 32, 32, 3), np.uint8)), "N x 8 x 8 x 1"),
}


@pytest.mark.parametrize("case", BAD)
def test_wrong_sample_file_is_one_line_exit_2_and_nothing_written(tmp_path, monkeypatch, capsys, case):
    make, expected = BAD[case]
    path = tmp_path / "samples.npz"
    make(path)
    out = tmp_path / "out"
    assert main_in_process(monkeypatch, "task=evaluate", f"run_dir={path}", f"hydra.run.dir={out}") == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: run_dir={path}") and expected in lines[0], lines
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["samples.npz"]


def test_sampling_a_sample_file_is_refused(tmp_path, monkeypatch, capsys):
    path = tmp_path / "samples_2x8x8x1.npz"
    np.savez(path, np.zeros((2, 8, 8, 1), np.uint8))
    assert main_in_process(monkeypatch, "task=sample", f"run_dir={path}", f"hydra.run.dir={tmp_path / 'out'}") == 2
    assert "task=evaluate" in capsys.readouterr().err

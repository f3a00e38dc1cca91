"""A task that reads an earlier run (``run_dir``) takes its network, schedule, data and method from that run (a
scoring task takes ``data=`` as the data to score against; a sampling one the method's sampling keys): a command-line
key of those groups that asks for something else than the run has is refused in one line naming it, exit 2, nothing
written, instead of being dropped (one that repeats the run's value passes); where the data lies (``+data.root=``: the
command's default data has no root) may be given anew, for data that moved since the run."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image
from runs import main_in_process

TINY = ["model.base_channels=8", "model.num_res_blocks=1", "method.num_timesteps=8", "trainer.batch_size=16",
        "trainer.precision=fp32", "trainer.max_steps=1", "trainer.progress=false", "sampler.num_samples=2",
        "evaluator=none", "num_threads=1"]


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory) -> tuple[Path, Path]:
    """A one-step run on a folder of 24 random 8x8 grayscale PNGs; returns (run directory, image folder)."""
    base = tmp_path_factory.mktemp("folder_run")
    images = base / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), mode="L").save(images / f"{i:02d}.png")
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert main_in_process(monkeypatch, f"hydra.run.dir={base / 'run'}", "data=image_folder", f"data.root={images}",
                               "data.image_size=8", "data.channels=1", "data.num_workers=0", *TINY) == 0
    return base / "run", images


@pytest.mark.parametrize("task, override, named", [
    ("sample", "model.base_channels=16", "model.base_channels"),
    ("sample", "model=dit", "model"),
    ("sample", "data.image_size=16", "data.image_size"),
    ("evaluate", "model.num_res_blocks=2", "model.num_res_blocks"),
    ("evaluate", "data.val_fraction=0.5", "data.val_fraction"),  # without data=, the run's data is scored against
    ("posthoc_ema", "schedule=cosine", "schedule"),
    ("distill", "model.base_channels=16", "model.base_channels"),
    ("distill", "data.val_fraction=0.5", "data.val_fraction"),
    ("sample", "method.num_timesteps=4", "method.num_timesteps"),
    ("distill", "method.prediction=x0", "method.prediction"),
])
def test_a_key_that_changes_the_runs_own_groups_is_refused_in_one_line(folder_run, task, override, named, tmp_path,
                                                                       monkeypatch, capsys):
    run_dir, _ = folder_run
    extra = ["distill=progressive"] if task == "distill" else []
    code = main_in_process(monkeypatch, f"task={task}", f"run_dir={run_dir}", *extra, override,
                           f"hydra.run.dir={tmp_path / 'new'}")
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {named}: this command line asks for "), lines
    assert f"task={task} takes" in lines[0] and f"drop {named} " in lines[0], lines
    assert not (tmp_path / "new").exists()


def test_keys_that_repeat_the_runs_values_pass(folder_run, tmp_path, monkeypatch):
    """The training command line reused (its model, data and method keys as the run has them) samples; a method
    preset (its default solver) and the method's sampling keys are this command line's to choose."""
    run_dir, _ = folder_run
    assert main_in_process(monkeypatch, "task=sample", f"run_dir={run_dir}", "model.base_channels=8",
                           "model.num_res_blocks=1", "data.image_size=8", "method.num_timesteps=8",
                           "method=ddim", "method.clip_denoised=false", "sampler.num_samples=2",
                           f"hydra.run.dir={tmp_path / 'new'}") == 0


def test_data_that_moved_is_found_through_data_root(folder_run, tmp_path, monkeypatch, capsys):
    run_dir, images = folder_run
    moved = tmp_path / "moved"
    shutil.copytree(images, moved)
    shutil.move(str(images), str(tmp_path / "gone"))  # the run's data.root no longer exists
    try:
        code = main_in_process(monkeypatch, "task=sample", f"run_dir={run_dir}", f"hydra.run.dir={tmp_path / 'a'}")
        error = capsys.readouterr().err
        assert code == 2 and "data.root" in error and str(images) in error, error
        assert main_in_process(monkeypatch, "task=sample", f"run_dir={run_dir}", f"+data.root={moved}",
                               "sampler.num_samples=2", f"hydra.run.dir={tmp_path / 'b'}") == 0
        assert np.load(tmp_path / "b" / "samples.npz")["samples"].shape == (2, 1, 8, 8)
        assert main_in_process(monkeypatch, "task=sample", f"run_dir={run_dir}", "data=image_folder",
                               f"data.root={moved}", "data.num_workers=1", "sampler.num_samples=2",
                               f"hydra.run.dir={tmp_path / 'c'}") == 0
        used = OmegaConf.load(tmp_path / "c" / "config.yaml").data
        assert used.root == str(moved) and used.num_workers == 1 and used.image_size == 8
    finally:
        shutil.move(str(tmp_path / "gone"), str(images))

"""Every transformer and EDM2 backbone composes with the Gaussian diffusion, EDM and flow matching, unconditional
and class-conditional: it trains two steps and samples through run.py (tiny sizes, synthetic 8x8 data), and a DiT
trains under torchrun with two gloo processes. A checkpoint of one backbone resumed as another, and a bad
backbone setting, are one line naming the key, exit 2, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from runs import ROOT, main_in_process

TINY = {
    "dit": ["model=dit", "model.depth=2", "model.hidden_size=32", "model.num_heads=2"],
    "uvit": ["model=uvit", "model.depth=3", "model.hidden_size=32", "model.num_heads=2"],
    "edm2_unet": ["model=edm2_unet", "model.model_channels=16", "model.channel_mults=[1,2]", "model.num_blocks=1",
                  "model.attention_resolutions=[4]", "model.channels_per_head=16"],
}
METHODS = {"gaussian": ["method=gaussian", "method.num_timesteps=20", "sampler.steps=4", "sampler.solver=ddim"],
           "edm": ["method=edm", "sampler.steps=3"],
           "flow_matching": ["method=flow_matching", "sampler.solver=heun", "sampler.steps=3"]}
CONDITIONAL = ["data.num_classes=3", "method.cond_drop_prob=0.2", "sampler.guidance_scale=2.0",
               "sampler.class_labels=all"]
RUN = ["data=synthetic", "data.shape=[1,8,8]", "data.num_samples=40", "trainer=fast", "trainer.max_steps=2",
       "trainer.batch_size=16", "trainer.precision=fp32", "sampler.num_samples=6", "evaluator=none"]


@pytest.mark.parametrize("conditional", [False, True], ids=["unconditional", "class-conditional"])
@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("model", list(TINY))
def test_backbone_trains_and_samples_with_each_method(model, method, conditional, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    code = main_in_process(monkeypatch, f"hydra.run.dir={run_dir}", *RUN, *TINY[model], *METHODS[method],
                           *(CONDITIONAL if conditional else []))
    assert code == 0
    samples = np.load(run_dir / "samples.npz")
    images = samples[samples.files[0]]
    assert images.shape[0] == 6 and np.isfinite(images).all()


def test_a_checkpoint_of_one_backbone_resumed_as_another_is_one_line(tmp_path, monkeypatch, capsys):
    earlier = tmp_path / "dit"
    assert main_in_process(monkeypatch, f"hydra.run.dir={earlier}", *RUN, *TINY["dit"], *METHODS["edm"]) == 0
    capsys.readouterr()
    code = main_in_process(monkeypatch, f"hydra.run.dir={tmp_path / 'new'}", *RUN, *TINY["uvit"], *METHODS["edm"],
                           f"resume={earlier}")
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "resume" in lines[0], lines
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("overrides, key", [
    (["model=dit", "model.patch_size=3"], "model.patch_size"),
    (["model=uvit", "model.hidden_size=30", "model.num_heads=4"], "model.num_heads"),
    (["model=dit", "model.size=XXL"], "model.size"),
    (["model=edm2_unet", "model.size=XXXL"], "model.size"),
    (["model=dit", "+model.in_channels=3"], "model.in_channels"),
    (["model=edm2_unet", "method=edm", "+model.image_size=16"], "model.image_size"),
    (["model=unet", "method=edm", "method.loss_weighting=uncertainty"], "method.loss_weighting"),
    (["model=uvit", "data.shape=[2]"], "model=uvit needs image data"),
])
def test_bad_backbone_setting_is_one_line_exit_2_nothing_written(overrides, key, tmp_path, monkeypatch, capsys):
    new_dir = tmp_path / "new"
    code = main_in_process(monkeypatch, f"hydra.run.dir={new_dir}", *RUN, *overrides)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and key in lines[0], lines
    assert not new_dir.exists(), "nothing may be written for a bad input"


def test_torchrun_with_two_gloo_processes_trains_a_dit(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(ROOT / "run.py"), *RUN, *TINY["dit"], *METHODS["edm"], *CONDITIONAL,
                             "trainer.device=cpu", f"hydra.run.dir={run_dir}"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir / "checkpoints" / "last.pt").is_file() and (run_dir / "samples.npz").is_file()


def test_edm2_unet_trains_with_the_learned_uncertainty_and_posthoc_ema(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    code = main_in_process(monkeypatch, f"hydra.run.dir={run_dir}", *RUN, *TINY["edm2_unet"], *METHODS["edm"],
                           "method.loss_weighting=uncertainty", "trainer.ema=posthoc", "trainer.ema_snapshot_every=1")
    assert code == 0
    assert (run_dir / "samples.npz").is_file() and any((run_dir / "checkpoints" / "posthoc_ema").iterdir())

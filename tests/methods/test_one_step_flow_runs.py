"""``run.py method=meanflow`` and ``method=shortcut`` end to end: a tiny run trains, samples in 1 step and is
sampled again in 2 (``task=sample``), scored at 1, 2 and 4 (``task=evaluate``) and exported and sampled from its
export; bad settings are one line naming
the key, nothing written; two gloo ranks hold identical parameters after their steps (the JVP and the
self-consistency targets run outside the DDP wrapper, the loss's backward inside it); a SIGKILLed run resumes bit
for bit; the MeanFlow presets train and build."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from kill_resume import assert_killed_run_resumes
from runs import ONE_EPOCH_MOONS, ROOT, TINY_DIGITS, main_in_process

from diffusion.app.build import build
from diffusion.models import MLP

TARGETS = {"meanflow": "MeanFlow", "shortcut": "Shortcut"}


@pytest.mark.parametrize("method", TARGETS)
def test_a_one_step_run_trains_and_samples_in_one_and_two_steps(method, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    assert main_in_process(monkeypatch, f"hydra.run.dir={run_dir}", *ONE_EPOCH_MOONS, f"method={method}",
                           "method.num_timesteps=50", "evaluator=points", "evaluator.num_samples=16") == 0
    scored = json.loads((run_dir / "eval.json").read_text())
    assert scored["sampler"] == method and scored["nfe"] == scored["steps"] == 1
    config = (run_dir / "config.yaml").read_text()
    assert "two_times: true" in config and f"diffusion.methods.{TARGETS[method]}" in config
    one = np.load(run_dir / "samples.npz")["samples"]
    assert one.shape == (16, 2) and np.isfinite(one).all()
    two_steps = tmp_path / "two"
    assert main_in_process(monkeypatch, "task=sample", f"run_dir={run_dir}", "sampler.steps=2", "sampler.num_samples=16",
                           f"hydra.run.dir={two_steps}") == 0
    two = np.load(two_steps / "samples.npz")["samples"]
    assert two.shape == one.shape and np.isfinite(two).all() and not np.allclose(one, two)
    scored_steps = tmp_path / "steps"
    assert main_in_process(monkeypatch, "task=evaluate", f"run_dir={run_dir}", "evaluator=points",
                           "evaluator.num_samples=16", "evaluator.sampler_steps=[1,2,4]",
                           f"hydra.run.dir={scored_steps}") == 0
    assert (scored_steps / "eval.json").is_file()
    exported, from_export = tmp_path / "export", tmp_path / "from_export"
    assert main_in_process(monkeypatch, "task=export", f"run_dir={run_dir}", f"hydra.run.dir={exported}") == 0
    assert main_in_process(monkeypatch, "task=sample", f"run_dir={exported / 'weights.safetensors'}",
                           "sampler.num_samples=16", "sampler.steps=2", f"hydra.run.dir={from_export}") == 0
    np.testing.assert_array_equal(np.load(from_export / "samples.npz")["samples"], two)  # the same EMA weights


@pytest.mark.parametrize(("override", "key"), [("method=meanflow sampler.solver=heun", "sampler.solver=heun"),
                                             ("method=meanflow method.r_equals_t_share=2", "method.r_equals_t_share"),
                                             ("method=meanflow model.two_times=false", "model.two_times"),
                                             ("method=shortcut sampler.steps=3", "sampler.steps=3"),
                                             ("method=shortcut sampler.solver=meanflow", "sampler.solver=meanflow")])
def test_bad_one_step_settings_are_one_line_and_write_nothing(override, key, tmp_path, monkeypatch, capsys):
    code = main_in_process(monkeypatch, *ONE_EPOCH_MOONS, *override.split(), f"hydra.run.dir={tmp_path / 'run'}")
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1 and error.startswith("error: ") and key in error, error
    assert not (tmp_path / "run").exists()


# Two ranks train a two-time MLP with MeanFlow or a shortcut model on moons for a few steps; each saves its
# parameters.
WORKER = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import torch

    from diffusion.data import MoonsData
    from diffusion.loggers import NullLogger
    from diffusion.methods import MeanFlow, Shortcut
    from diffusion.models import MLP
    from diffusion.runtime.distributed import DistributedContext, exit_process
    from diffusion.runtime.seeding import seed_everything
    from diffusion.storage.file_manager import FileManager
    from diffusion.training.trainer import Trainer

    out = Path(sys.argv[1])
    dist = DistributedContext.from_environment("cpu")
    torch.manual_seed(0)  # identical initial weights on every rank
    model = MLP(hidden_dim=16, num_layers=1, time_embed_dim=8, two_times=True)
    seed_everything(100 + dist.rank)  # each rank draws its own times and noise, so its own JVP tangents
    method = {"meanflow": MeanFlow, "shortcut": Shortcut}[sys.argv[2]](num_timesteps=50, clip_denoised=False)
    trainer = Trainer(model, method, MoonsData(num_samples=200),
                      FileManager(out / f"ckpt{dist.rank}"), NullLogger(), epochs=1, lr=1e-2, batch_size=64,
                      device="cpu", progress=False, distributed=dist)
    trainer.train()
    torch.save([p.detach() for p in model.parameters()], out / f"rank{dist.rank}.pt")
    dist.close()
    exit_process()  # a DDP rank skips finalisation (its docstring: PyTorch's exit race)
    """
)


@pytest.mark.parametrize("method", TARGETS)
def test_two_gloo_ranks_hold_identical_parameters_after_their_steps(method, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(script), str(tmp_path), method], env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    torch.manual_seed(0)
    start = list(MLP(hidden_dim=16, num_layers=1, time_embed_dim=8, two_times=True).parameters())
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert all(torch.equal(a, b) for a, b in zip(*ranks)), "the ranks' parameters differ after a step"
    assert not all(torch.equal(a, b) for a, b in zip(ranks[0], start)), "the parameters moved"


@pytest.mark.parametrize("method", TARGETS)
def test_a_killed_one_step_run_resumes_bit_for_bit(method, tmp_path, monkeypatch):
    assert_killed_run_resumes(tmp_path, monkeypatch, f"method={method}")

def test_the_meanflow_presets_train_and_build_two_time_networks(tmp_path, monkeypatch):
    # In bfloat16, the default run's precision: the JVP runs in float32 outside the autocast (forward-mode AD
    # through autocast's weight casts fails on the CPU).
    run_dir = tmp_path / "digits"
    assert main_in_process(monkeypatch, "experiment=digits_meanflow", *TINY_DIGITS, "trainer.precision=bf16",
                           "evaluator.num_samples=8", f"hydra.run.dir={run_dir}") == 0
    scored = json.loads((run_dir / "eval.json").read_text())
    assert scored["sampler"] == "meanflow" and scored["nfe"] == 1
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        mnist = build(compose(config_name="config", overrides=["experiment=mnist_meanflow"]))
    assert mnist.config["model"]["two_times"] is True and mnist.model.num_classes == 10
    assert mnist.method.guidance_scale == 2.0 and mnist.config["sampler"]["guidance_scale"] == 1.0


def test_a_guide_without_the_second_time_is_one_line(tmp_path, monkeypatch, capsys):
    """A MeanFlow run guided by a plain flow run's weights (one time embedding): refused naming sampler.guide."""
    main_run, plain = tmp_path / "meanflow", tmp_path / "plain"
    assert main_in_process(monkeypatch, f"hydra.run.dir={main_run}", *ONE_EPOCH_MOONS, "method=meanflow",
                           "method.num_timesteps=50", "evaluator=none") == 0
    assert main_in_process(monkeypatch, f"hydra.run.dir={plain}", *ONE_EPOCH_MOONS, "method=flow_matching",
                           "method.prediction=velocity", "method.num_timesteps=50", "evaluator=none") == 0
    capsys.readouterr()
    out = tmp_path / "guided"
    code = main_in_process(monkeypatch, "task=sample", f"run_dir={main_run}", f"sampler.guide={plain}",
                           "sampler.guide_scale=2", f"hydra.run.dir={out}")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "sampler.guide=" in err[0] and "two_times" in err[0]
    assert not (out / "samples.npz").exists()

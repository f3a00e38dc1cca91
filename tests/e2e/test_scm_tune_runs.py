"""``run.py method=scm`` (sCT) and ``task=tune`` (ECT from an EDM run; sCD, ``method=scm``, from a flow run) end to
end: tiny runs train, sample in 1 step and in 2 (``task=sample``), export; bad settings and teachers of the wrong
formulation are one line naming the key, exit 2, nothing written; a SIGKILLed sCT run (its JVP tangent, warm-up
and adaptive weight) resumes bit for bit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import yaml
from kill_resume import assert_killed_run_resumes
from runs import ONE_EPOCH_MOONS, ROOT, main_in_process

from diffusion.storage.file_manager import FileManager, load_checkpoint

SAMPLED = ["sampler.num_samples=16", "evaluator=points", "evaluator.num_samples=16"]
TUNE = ["task=tune", "trainer.progress=false", *SAMPLED]


def teacher_run(tmp_path, monkeypatch, method: str):
    run_dir = tmp_path / method
    assert main_in_process(monkeypatch, f"hydra.run.dir={run_dir}", *ONE_EPOCH_MOONS, f"method={method}",
                           "evaluator=none") == 0
    return run_dir


def test_an_sct_run_trains_samples_in_one_and_two_steps_and_exports(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    assert main_in_process(monkeypatch, f"hydra.run.dir={run_dir}", *ONE_EPOCH_MOONS, "method=scm",
                           "method.sigma_data=1.0", *SAMPLED) == 0
    scored = json.loads((run_dir / "eval.json").read_text())
    assert scored["sampler"] == "scm" and scored["nfe"] == scored["steps"] == 1
    weights = load_checkpoint(run_dir / "checkpoints" / "best.pt")["ema_state_dict"]["shadow"]
    assert "trigflow_weight.linear.weight" in weights  # the adaptive weight is saved with the network
    one = np.load(run_dir / "samples.npz")["samples"]
    two_steps, exported, from_export = tmp_path / "two", tmp_path / "export", tmp_path / "from_export"
    assert main_in_process(monkeypatch, "task=sample", f"run_dir={run_dir}", "sampler.steps=2",
                           "sampler.num_samples=16", f"hydra.run.dir={two_steps}") == 0
    two = np.load(two_steps / "samples.npz")["samples"]
    assert two.shape == one.shape == (16, 2) and np.isfinite(two).all() and not np.allclose(one, two)
    assert main_in_process(monkeypatch, "task=export", f"run_dir={run_dir}", f"hydra.run.dir={exported}") == 0
    assert main_in_process(monkeypatch, "task=sample", f"run_dir={exported / 'weights.safetensors'}",
                           "sampler.num_samples=16", "sampler.steps=2", f"hydra.run.dir={from_export}") == 0
    np.testing.assert_array_equal(np.load(from_export / "samples.npz")["samples"], two)


def test_ect_tunes_an_edm_run_at_a_share_of_its_steps(tmp_path, monkeypatch):
    teacher = teacher_run(tmp_path, monkeypatch, "edm")
    teacher_steps = load_checkpoint(FileManager(teacher).best_or_last())["train_state"]["global_step"]
    tuned, two_steps = tmp_path / "tuned", tmp_path / "two"
    assert main_in_process(monkeypatch, *TUNE, f"run_dir={teacher}", "tune.share=0.5",
                           f"hydra.run.dir={tuned}") == 0
    config = yaml.safe_load((tuned / "config.yaml").read_text())
    assert config["method"]["_target_"] == "diffusion.methods.ConsistencyTuning"
    teacher_lr = yaml.safe_load((teacher / "config.yaml").read_text())["trainer"]["lr"]
    assert config["trainer"]["warmup_steps"] == 0 and config["trainer"]["lr"] == pytest.approx(0.1 * teacher_lr)
    assert config["trainer"]["max_steps"] == config["method"]["total_steps"] == max(1, round(0.5 * teacher_steps))
    assert load_checkpoint(tuned / "checkpoints" / "last.pt")["train_state"]["global_step"] == max(
        1, round(0.5 * teacher_steps))
    scored = json.loads((tuned / "eval.json").read_text())
    assert scored["sampler"] == "ect" and scored["nfe"] == 1
    assert main_in_process(monkeypatch, "task=sample", f"run_dir={tuned}", "sampler.steps=2",
                           "sampler.num_samples=16", f"hydra.run.dir={two_steps}") == 0
    assert np.isfinite(np.load(two_steps / "samples.npz")["samples"]).all()


def test_scd_distils_a_flow_run_into_a_trigflow_student(tmp_path, monkeypatch):
    teacher = teacher_run(tmp_path, monkeypatch, "flow_matching")
    student = tmp_path / "student"
    assert main_in_process(monkeypatch, *TUNE, f"run_dir={teacher}", "method=scm", "method.sigma_data=1.0",
                           "tune.steps=3", f"hydra.run.dir={student}") == 0
    config = yaml.safe_load((student / "config.yaml").read_text())
    assert config["method"]["_target_"] == "diffusion.methods.SCM" and config["trainer"]["max_steps"] == 3
    assert json.loads((student / "eval.json").read_text())["sampler"] == "scm"


def test_bad_settings_and_wrong_teachers_are_one_line_and_write_nothing(tmp_path, monkeypatch, capsys):
    ddpm, flow = teacher_run(tmp_path, monkeypatch, "ddpm"), teacher_run(tmp_path, monkeypatch, "flow_matching")
    cases = (
        ([*ONE_EPOCH_MOONS, "method=scm", "sampler.steps=3"], "sampler.steps"),
        ([*ONE_EPOCH_MOONS, "method=scm", "method.t_mid=2"], "method.t_mid"),
        (["task=tune", f"run_dir={ddpm}"], f"run_dir={ddpm}"),
        (["task=tune", f"run_dir={ddpm}", "method=scm"], f"run_dir={ddpm}"),
        (["task=tune", f"run_dir={flow}"], f"run_dir={flow}"),  # ECT tunes EDM runs only
        (["task=tune", f"run_dir={flow}", "method=ddim"], "method=ddim"),
        (["task=tune", f"run_dir={flow}", "method=scm", "sampler.steps=3"], "sampler.steps"),
        (["task=tune", f"run_dir={flow}", "method=scm", "trainer.max_steps=2"], "set tune.steps"),
    )
    for overrides, key in cases:
        capsys.readouterr()
        code = main_in_process(monkeypatch, *overrides, f"hydra.run.dir={tmp_path / 'bad'}")
        error = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(error) == 1 and error[0].startswith("error: ") and key in error[0], (overrides, error)
        assert not (tmp_path / "bad").exists()


# Two ranks train an MLP with sCT on moons for a few steps (its adaptive weight is used outside the DDP forward,
# the JVP on the bare network); each saves its parameters.
WORKER = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import torch

    from diffusion.data import MoonsData
    from diffusion.loggers import NullLogger
    from diffusion.methods import SCM
    from diffusion.models import MLP
    from diffusion.runtime.distributed import DistributedContext, exit_process
    from diffusion.runtime.seeding import seed_everything
    from diffusion.storage.file_manager import FileManager
    from diffusion.training.trainer import Trainer

    out = Path(sys.argv[1])
    dist = DistributedContext.from_environment("cpu")
    torch.manual_seed(0)  # identical initial weights on every rank
    model, method = MLP(hidden_dim=16, num_layers=1, time_embed_dim=8), SCM(clip_denoised=False, sigma_data=1.0)
    method.check_network(model)
    with torch.no_grad():
        model.trigflow_weight.linear.bias.fill_(0.1)  # nonzero, so its gradient reaches the network's too
    seed_everything(100 + dist.rank)  # each rank draws its own times and noise, so its own tangents
    trainer = Trainer(model, method, MoonsData(num_samples=200), FileManager(out / f"ckpt{dist.rank}"), NullLogger(),
                      epochs=1, lr=1e-2, batch_size=64, device="cpu", progress=False, distributed=dist)
    trainer.train()
    torch.save([p.detach() for p in model.parameters()], out / f"rank{dist.rank}.pt")
    dist.close()
    exit_process()  # a DDP rank skips finalisation (its docstring: PyTorch's exit race)
    """
)


def test_two_gloo_ranks_hold_identical_parameters_after_sct_steps(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=240, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert all(torch.equal(a, b) for a, b in zip(*ranks)), "the ranks' parameters differ after a step"
    assert ranks[0][-2].abs().sum() > 0, "the adaptive weight moved"


@pytest.mark.parametrize("method", ["scm"])
def test_a_killed_sct_run_resumes_bit_for_bit(method, tmp_path, monkeypatch):
    assert_killed_run_resumes(tmp_path, monkeypatch, f"method={method}", "method.tangent_warmup_steps=20")

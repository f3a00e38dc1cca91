"""Distillation: the progressive target and the consistency boundary condition in closed form; short
distillations of a tiny moons teacher through run.py, sampled with task=sample; bad options; resume=auto."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from runs import main_in_process

from diffusion.storage import checkpoint
from diffusion.distill import ConsistencyDistillation, DistillSession, ProgressiveDistillation
from diffusion.storage.file_manager import load_checkpoint
from diffusion.methods import Consistency, GaussianDiffusion
from diffusion.models.mlp import MLP
from diffusion.methods.schedules import linear_betas
from diffusion.runtime.checks import ConfigError
from diffusion.sampling.grids import build_grid

TEACHER = [
    "experiment=moons_mlp",
    "trainer.epochs=2",
    "trainer.progress=false",
    "data.num_samples=400",
    "model.hidden_dim=16",
    "model.num_layers=1",
    "method.num_timesteps=50",
    "method.prediction=v",
    "sampler.num_samples=8",
    "evaluator=none",
    "num_threads=1",
]
FAST = ["num_threads=1", "sampler.num_samples=8"]
# 2 rounds of 2 steps (an 8-step teacher -> 4 -> 2 steps); last.pt every step so that a kill loses nothing.
PROGRESSIVE = ["task=distill", "distill=progressive", "distill.start_steps=8", "distill.end_steps=2",
               "distill.steps_per_round=2", "trainer.progress=false", "trainer.checkpoint_every_n_steps=1",
               *FAST]


def tiny_network(seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    model = MLP(dim=2, hidden_dim=16, num_layers=1, time_embed_dim=16)
    with torch.no_grad():
        for p in model.parameters():  # no zero-initialised output layer: the teacher must not be the identity
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def gaussian(cls: type, prediction: str = "v", **kwargs):  # type: ignore[no-untyped-def]
    return cls(lambda n: linear_betas(n), num_timesteps=50, prediction=prediction, clip_denoised=False, **kwargs)


@pytest.mark.parametrize("prediction", ["v", "epsilon", "x0"])
def test_progressive_target_is_the_x_whose_single_ddim_step_equals_two_teacher_steps(prediction):
    method, teacher = gaussian(GaussianDiffusion, prediction), tiny_network()
    distillation = ProgressiveDistillation(method, teacher, start_steps=8, end_steps=2, steps_per_round=1)
    grid = distillation.teacher_grid(4)  # the 4-step student's round: teacher on 8 steps
    index = torch.arange(4).repeat(4)  # every student step, including the last one to data (t_end = -1)
    t, t_mid, t_end = grid[2 * index], grid[2 * index + 1], grid[2 * index + 2]
    x_t = method.q_sample(torch.randn(16, 2), t, torch.randn(16, 2))

    target = distillation.target_x0(x_t, t, t_mid, t_end, {})

    with torch.no_grad():
        two_steps = method.ddim_step(x_t, t, t_mid, teacher(x_t, t))
        two_steps = method.ddim_step(two_steps, t_mid, t_end, teacher(two_steps, t_mid))
        # the student output that predicts x0 = target, in the method's parameterisation
        eps = (x_t - method.coefficient("sqrt_alphas_cumprod", t, x_t) * target) / method.coefficient(
            "sqrt_one_minus_alphas_cumprod", t, x_t)
        output = {"x0": target, "epsilon": eps, "v": method.training_target(target, t, eps)}[prediction]
        one_step = method.ddim_step(x_t, t, t_end, output)
    torch.testing.assert_close(one_step, two_steps, rtol=1e-4, atol=1e-5)
    assert torch.isfinite(distillation.compute_loss(tiny_network(1).train(), torch.randn(8, 2)))


def test_progressive_rounds_and_options():
    method = gaussian(GaussianDiffusion)
    distillation = ProgressiveDistillation(method, tiny_network(), start_steps=32, end_steps=4, steps_per_round=5)
    assert distillation.student_steps == [16, 8, 4] and distillation.total_steps == 15
    for start, end in ((12, 4), (4, 4), (64, 4)):  # not a power-of-two multiple; no round; more steps than T
        with pytest.raises(ConfigError, match="distill.start_steps"):
            ProgressiveDistillation(method, tiny_network(), start_steps=start, end_steps=end)


def test_consistency_student_is_the_identity_at_the_trajectory_end_point():
    method = gaussian(Consistency)
    x = torch.randn(8, 2)
    t_min = torch.zeros(8, dtype=torch.long)
    for output in (torch.randn(8, 2), tiny_network()(x, t_min)):
        f = method.consistency_function(x, t_min, output)
        torch.testing.assert_close(f, x / method.sqrt_alphas_cumprod[0].float(), rtol=1e-6, atol=1e-7)  # to rounding
    assert float(method.c_skip[0]) == 1.0 and float(method.c_out[0]) == 0.0
    assert bool((method.c_out[1:] > method.c_out[:-1]).all())  # toward the denoiser as the noise grows
    assert [build_grid(method, "schedule", steps, "leading").labels for steps in (method.default_steps("consistency"), 2)
            ] == [[49], [49, 24]]  # its own trailing grid, one step by default


def test_consistency_loss_follows_the_target_network_once_per_step():
    method, student = gaussian(Consistency), tiny_network(1).train()
    distillation = ConsistencyDistillation(method, tiny_network(), num_scales=10, target_decay=0.5, steps=4)
    step = [0]
    distillation.bind(lambda: step[0])
    assert torch.isfinite(distillation.compute_loss(student, torch.randn(8, 2)))
    before = [p.clone() for p in distillation.target.parameters()]
    step[0] = 1
    distillation.compute_loss(student, torch.randn(8, 2))
    distillation.compute_loss(student, torch.randn(8, 2))  # a second micro-batch of the same step: no update
    for old, new, theta in zip(before, distillation.target.parameters(), student.parameters()):
        torch.testing.assert_close(new, 0.5 * old + 0.5 * theta.detach())


@pytest.mark.parametrize("option", ["progressive", "consistency"])
def test_every_distill_option_composes_and_builds_on_a_teacher_method(option):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from diffusion.app.method_config import make_method

    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[2] / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["task=distill", f"distill={option}", "method=ddim",
                                                       "method.num_timesteps=64", "method.prediction=v"])
    teacher_method = OmegaConf.create(OmegaConf.to_container(cfg.method, resolve=True))  # as a config.yaml holds it
    student = OmegaConf.to_container(cfg.student, resolve=True)
    student_method = make_method(OmegaConf.merge(teacher_method, student))
    distillation = instantiate(cfg.distill, _convert_="all")(method=student_method, teacher=tiny_network())
    assert distillation.total_steps >= 1
    assert student_method.default_steps(student_method.default_solver) == cfg.student.distilled_steps
    assert cfg.trainer.precision == "fp32"


# ----------------------------------------------------------------------------------------------------------------
# Through run.py
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("teacher") / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert main_in_process(monkeypatch, f"hydra.run.dir={run_dir}", *TEACHER) == 0
    return run_dir


@pytest.fixture(scope="module")
def progressive_run(teacher_run, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("progressive") / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert main_in_process(monkeypatch, f"run_dir={teacher_run}", f"hydra.run.dir={run_dir}", *PROGRESSIVE,
                               "evaluator=moons", "evaluator.num_samples=16") == 0  # each round scored
    return run_dir


def test_progressive_distillation_runs_end_to_end_and_its_student_samples(progressive_run, tmp_path, monkeypatch):
    checkpoints = progressive_run / "checkpoints"
    assert all((checkpoints / f"round_{steps:04d}.pt").is_file() for steps in (4, 2))
    rows = json.loads((progressive_run / "distill_rounds.json").read_text())
    assert [(r["round"], r["steps"], r["global_step"]) for r in rows] == [(1, 4, 2), (2, 2, 4)]
    assert all(math.isfinite(r["mmd"]) for r in rows)  # the evaluator's score of each round's student
    assert (progressive_run / "distill_rounds.png").read_bytes().startswith(b"\x89PNG")
    best = load_checkpoint(checkpoints / "best.pt")
    assert checkpoint.global_step(best) == 4
    assert best["config"]["method"]["_target_"] == "diffusion.distill.DistilledDDIM"
    assert best["config"]["method"]["distilled_steps"] == 2

    out = tmp_path / "sampled"
    assert main_in_process(monkeypatch, "task=sample", f"run_dir={progressive_run}", f"hydra.run.dir={out}",
                            *FAST) == 0
    assert (out / "samples.npz").is_file()
    plain = tmp_path / "plain_ddim"  # DDIM on the same grid is the same sampler; the student's own keys stay behind
    assert main_in_process(monkeypatch, "task=sample", f"run_dir={progressive_run}", "method=ddim", "sampler.steps=2",
                           "sampler.timestep_spacing=trailing", f"hydra.run.dir={plain}", *FAST) == 0


def test_consistency_distillation_runs_and_samples_in_one_and_two_steps(teacher_run, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "consistency"
    assert main_in_process(monkeypatch, "task=distill", "distill=consistency", "distill.steps=3",
                           "distill.num_scales=6", f"run_dir={teacher_run}", f"hydra.run.dir={run_dir}",
                           "trainer.progress=false", *FAST) == 0
    assert load_checkpoint(run_dir / "checkpoints" / "best.pt")["config"]["method"]["_target_"] == (
        "diffusion.methods.Consistency")
    assert (run_dir / "samples.npz").is_file()  # the run's own sampling: sampler.steps=null, one step
    out = tmp_path / "sampled"
    assert main_in_process(monkeypatch, "task=sample", f"run_dir={run_dir}", "sampler.steps=2",
                           f"hydra.run.dir={out}", *FAST) == 0
    assert (out / "samples.npz").is_file()
    capsys.readouterr()
    assert main_in_process(monkeypatch, "task=sample", f"run_dir={run_dir}", "method=ddim",
                           f"hydra.run.dir={tmp_path / 'refused'}", *FAST) == 2
    assert "samples only with its own method" in capsys.readouterr().err


@pytest.mark.parametrize("overrides, names", [
    (["distill=progressive"], "run_dir"),
    (["run_dir={teacher}"], "distill=progressive"),
    (["run_dir={teacher}", "distill=progressive", "distill.start_steps=12", "distill.end_steps=4"],
     "distill.start_steps"),
    (["run_dir={empty}", "distill=progressive"], "no checkpoint"),
    (["task=train", "distill=consistency"], "task=distill"),
    (["run_dir={teacher}", "distill=progressive", "trainer.max_steps=2"], "distill.steps_per_round"),
    (["run_dir={teacher}", "distill=consistency", "trainer.max_steps=2"], "from distill.steps;"),
])
def test_bad_distill_options_give_one_line_and_exit_2(overrides, names, teacher_run, tmp_path, monkeypatch, capsys):
    empty = tmp_path / "no_checkpoints"
    empty.mkdir()
    (empty / "config.yaml").write_text((teacher_run / "config.yaml").read_text())
    filled = [o.format(teacher=teacher_run, empty=empty) for o in overrides]
    capsys.readouterr()
    code = main_in_process(monkeypatch, "task=distill", f"hydra.run.dir={tmp_path / 'new'}", *filled, *FAST)
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if "machine is busy" not in line]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and names in lines[0], lines


class Killed(BaseException):
    """Stands for a kill: raised at a round's end, caught by nothing in the code under test."""


def test_resume_auto_continues_a_killed_distillation_to_the_same_student(progressive_run, teacher_run, tmp_path,
                                                                         monkeypatch):
    run_dir = tmp_path / "killed"
    original = DistillSession.round_end

    def killed_at_the_first_round_end(self, index):  # type: ignore[no-untyped-def]
        if index == 0:
            raise Killed
        return original(self, index)

    monkeypatch.setattr(DistillSession, "round_end", killed_at_the_first_round_end)
    args = [f"run_dir={teacher_run}", f"hydra.run.dir={run_dir}", *PROGRESSIVE]
    with pytest.raises(Killed):
        main_in_process(monkeypatch, *args)
    assert checkpoint.global_step(load_checkpoint(run_dir / "checkpoints" / "last.pt")) == 2  # round 1's steps
    assert not (run_dir / "checkpoints" / "round_0004.pt").exists()
    monkeypatch.setattr(DistillSession, "round_end", original)

    assert main_in_process(monkeypatch, *args, "resume=auto") == 0

    resumed = checkpoint.ema_weights(load_checkpoint(run_dir / "checkpoints" / "best.pt"))
    uninterrupted = checkpoint.ema_weights(load_checkpoint(progressive_run / "checkpoints" / "best.pt"))
    for name, tensor in uninterrupted.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=0, msg=name)
    assert len(json.loads((run_dir / "distill_rounds.json").read_text())) == 2


@pytest.mark.slow
def test_distill_benchmark_quick(tmp_path: Path):
    """``python -m experiments.benchmarks.distill --quick``: five run.py launches (about 4 min on a busy core)."""
    from experiment_scripts import assert_checks_report, run_quick, table

    out = tmp_path / "distill.md"
    result = run_quick("experiments.benchmarks.distill", "--work-dir", str(tmp_path / "runs"), "--out", str(out))
    text = out.read_text()
    assert text.strip() in result.stdout
    assert_checks_report(text, "Few-step generation by distillation on digits",
                         "experiments.benchmarks.distill", checks=4)
    rows = table(text)
    assert [(r[0], r[1]) for r in rows[:7]] == [("teacher DDIM", "1"), ("teacher DDIM", "2"), ("teacher DDIM", "4"),
                                               ("teacher DDIM", "10"), ("progressive", "4"), ("consistency", "1"),
                                               ("consistency", "2")]

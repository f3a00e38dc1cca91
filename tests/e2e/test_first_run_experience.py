"""What a new user meets first: the guided grid, sampler step counts, refused settings, a stop signal
while sampling, command-line messages, where a W&B run went, and the legends of pictures and numbers.

Most cases run ``run.py`` in this process on a tiny moons run; the stop signal needs a real process.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from runs import ONE_EPOCH_MOONS, ROOT, child_env, main_in_process

from diffusion.storage import images
from diffusion.data import DigitsData
from diffusion.evaluation import inception
from diffusion.evaluation.inception import InceptionEvaluator
from diffusion.loggers import FileLogger
from diffusion.methods import GaussianDiffusion
from diffusion.sampling.grids import build_grid
from diffusion.tasks.sample_and_score import FINAL, grid_selection, log_unavailable, prepare_evaluator, trajectory_timesteps
from diffusion.sampling.sampler import Sampler, SampleResult, save_samples
from diffusion.methods.schedules import linear_betas

TINY = [*ONE_EPOCH_MOONS, "evaluator.num_samples=16"]


@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory) -> tuple[Path, list[str]]:
    """A finished tiny run logged to W&B (offline: conftest.py), and the lines it printed."""
    run_dir = tmp_path_factory.mktemp("earlier") / "run"
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as monkeypatch, contextlib.redirect_stdout(printed):
        assert main_in_process(monkeypatch, f"hydra.run.dir={run_dir}", *TINY, "logger=wandb") == 0
    return run_dir, printed.getvalue().splitlines()


@pytest.fixture(scope="module")
def earlier_run(wandb_run: tuple[Path, list[str]]) -> Path:
    return wandb_run[0]


# 1. The guided grid --------------------------------------------------------------------------------------------
def test_guided_grid_has_one_row_per_class_on_the_image(tmp_path: Path) -> None:
    """More samples drawn than shown (evaluator.num_samples > sampler.num_samples), in class order: samples.png
    still has one row per class, row r holding only class r's images."""
    num_classes, shown, drawn, size = 4, 8, 20, 4
    labels = torch.arange(drawn) * num_classes // drawn  # 5 of each class, in class order
    values = torch.linspace(-1.0, 1.0, num_classes)  # class c's images are constant values[c]
    samples = values[labels].view(drawn, 1, 1, 1).expand(drawn, 1, size, size).clone()
    result = SampleResult(samples=samples, steps=1, labels=labels)
    sampler = SimpleNamespace(num_samples=shown, class_labels="all", num_classes=num_classes)

    grid, nrow = grid_selection(sampler, result)  # type: ignore[arg-type]
    save_samples(result, tmp_path, grid=grid, nrow=nrow)

    pixels = np.asarray(Image.open(tmp_path / "samples.png").convert("L")).astype(int)
    scale, pad, per_row = 4, 1, shown // num_classes
    assert pixels.shape == (scale * (num_classes * (size + pad) + pad), scale * (per_row * (size + pad) + pad))
    expected = images.to_uint8(values).tolist()
    for row in range(num_classes):
        for column in range(per_row):
            top, left = scale * (pad + row * (size + pad)), scale * (pad + column * (size + pad))
            tile = pixels[top : top + scale * size, left : left + scale * size]
            assert (tile == expected[row]).all(), f"row {row}, column {column}"


# 3. evaluator.sampler_steps -----------------------------------------------------------------------------------
def test_sampler_steps_sample_only_those_step_counts(
    earlier_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int | None, int | None]] = []
    original = Sampler.sample

    def spy(self: Sampler, num_samples: int | None = None, **kwargs: object) -> SampleResult:
        calls.append((self.steps, num_samples))
        return original(self, num_samples, **kwargs)

    monkeypatch.setattr(Sampler, "sample", spy)
    out = tmp_path / "eval"
    code = main_in_process(monkeypatch, "task=evaluate", f"run_dir={earlier_run}", f"hydra.run.dir={out}",
                           "method=ddim", "evaluator=points", "evaluator.sampler_steps=[3,5]",
                           "evaluator.num_samples=16")
    assert code == 0
    assert calls == [(3, 16), (5, 16)]  # no pass at the default 50 steps, none for the picture
    assert (out / "eval_steps.md").is_file()


# 4. Refused guidance, a stop signal while sampling -------------------------------------------------------------
def test_guidance_on_an_unconditional_model_is_refused_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    code = main_in_process(monkeypatch, f"hydra.run.dir={run_dir}", *TINY, "sampler.guidance_scale=3")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "sampler.guidance_scale" in err[0] and "model.num_classes" in err[0], err
    assert not (run_dir / "checkpoints").exists()


def test_sigterm_while_sampling_says_what_was_kept_and_exits_143(tmp_path: Path) -> None:
    """After training, sampling 1000 steps for many samples takes seconds; SIGTERM then ends it at once."""
    run_dir = tmp_path / "run"
    slow = [*TINY, "method.num_timesteps=1000", "sampler.num_samples=4000", "sampler.batch_size=4000"]
    process = subprocess.Popen([sys.executable, str(ROOT / "run.py"), f"hydra.run.dir={run_dir}", *slow],
                               cwd=tmp_path, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("sampling from the best EMA checkpoint"):
                break
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    lines = err.strip().splitlines()
    assert process.returncode == 143, err
    assert len(lines) == 1 and lines[0].startswith("stopped by SIGTERM while sampling"), err
    assert f"python run.py task=sample run_dir={run_dir}" in lines[0] and "checkpoints" in lines[0]
    assert (run_dir / "checkpoints" / "best.pt").is_file()
    assert not (run_dir / "samples.npz").exists()


# 5. Command-line messages --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "wanted", "unwanted"),
    [
        (["trainer.epochs", "3"], "use key=value, e.g. trainer.epochs=3", "Error parsing"),
        (["metod=ddim"], "did you mean method?", "+metod"),
        (["evaluator=none", "evaluator.num_samples=3"], "evaluator=none scores no samples", "did you mean"),
    ],
)
def test_command_line_mistakes_say_what_to_type(
    overrides: list[str], wanted: str, unwanted: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main_in_process(monkeypatch, f"hydra.run.dir={tmp_path / 'run'}", *TINY, *overrides)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and wanted in err[0] and unwanted not in err[0], err


# 6. Where the W&B run went -------------------------------------------------------------------------------------
def test_wandb_run_prints_metrics_and_how_to_sync_and_browse(wandb_run: tuple[Path, list[str]]) -> None:
    run_dir, out = wandb_run
    assert any("train/loss=" in line for line in out), out
    (folder,) = [line.removeprefix("W&B offline run: ") for line in out if line.startswith("W&B offline run: ")]
    assert Path(folder).is_dir() and Path(folder).parent == run_dir / "wandb"
    assert f"upload it with: wandb sync {folder}" in out
    assert f"browse it with: wandb leet {run_dir / 'wandb'}" in out


# 7. Legends ----------------------------------------------------------------------------------------------------
def test_ddim_trajectory_strip_reaches_the_last_step_and_ends_with_the_sample(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sequence = build_grid(GaussianDiffusion(linear_betas, num_timesteps=1000), "schedule", 20, "leading").labels
    recorded = trajectory_timesteps(sequence)
    assert recorded[0] == sequence[0] and recorded[-2] == sequence[-1] and recorded[-1] == FINAL
    shown: list[list[str]] = []
    label_columns = images._label_columns
    monkeypatch.setattr(images, "_label_columns", lambda grid, labels, **kw: shown.append(labels)
                        or label_columns(grid, labels, **kw))
    frames = {t: torch.zeros(2, 1, 8, 8) for t in recorded}
    save_samples(SampleResult(torch.zeros(2, 1, 8, 8), 20, trajectory=frames), tmp_path)
    assert shown == [[str(t) for t in recorded[:-1]] + ["x0"]]


def test_resumed_complete_run_says_training_already_complete(
    earlier_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(earlier_run, run_dir)
    assert main_in_process(monkeypatch, f"hydra.run.dir={run_dir}", *TINY, "resume=auto", "logger=file") == 0
    assert "training already complete" in capsys.readouterr().out


def test_inception_unavailable_is_said_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    weights = tmp_path / "empty" / inception.INCEPTION_WEIGHTS_FILE
    evaluator = InceptionEvaluator(num_samples=16, weights_path=str(weights))
    with caplog.at_level(logging.WARNING), FileLogger(tmp_path / "run") as logger:
        prepare_evaluator(evaluator, DigitsData())
        log_unavailable(evaluator, logger)
    captured = capsys.readouterr()
    said = captured.out + captured.err + "".join(r.getMessage() + "\n" for r in caplog.records)
    assert evaluator.unavailable_reason and said.count(evaluator.unavailable_reason) == 1, said


@pytest.mark.parametrize("method", ["ddim", "heun"])
def test_sampling_shows_a_progress_bar_over_steps_and_batches_on_a_terminal(monkeypatch, capsys, method):
    built = GaussianDiffusion(linear_betas, num_timesteps=20, clip_denoised=False, default_solver=method)
    net = torch.nn.Linear(2, 2)
    model = lambda x, t, *args: net(x)  # noqa: E731 - any network of (x, t)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    sampler = Sampler(torch.nn.Module(), built, (2,), num_samples=10, batch_size=4, steps=3, device="cpu",
                      progress=True)
    sampler.model = model
    sampler.sample()
    bar = sampler._bar
    assert bar.total == 3 * len(sampler.timesteps()) and bar.n == bar.total, (bar.n, bar.total)
    assert "sampling 10" in capsys.readouterr().err
    quiet = Sampler(torch.nn.Module(), built, (2,), num_samples=10, batch_size=4, steps=3, device="cpu")
    quiet.model = model
    quiet.sample()
    assert capsys.readouterr().err == "", "no bar without sampler.progress (trainer.progress=false)"

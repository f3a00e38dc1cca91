"""Bad inputs across every config group: one line on stderr naming the key, exit status 2, no traceback, and
no file of an earlier run changed.

Every training case points ``resume=`` at an earlier, finished run: an input that slipped through would
continue that run and change its files, which the digest comparison catches. The cases complement
``BAD_INPUTS`` in tests/e2e/test_run_tasks.py. They run in this process (Hydra composes in milliseconds; an interpreter start
costs seconds), except the ones that need a real command line.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest
from runs import ONE_EPOCH_MOONS, ROOT, main_in_process, run_py, tree_digest

EARLIER_RUN = [*ONE_EPOCH_MOONS, "evaluator=none"]
OTHER_DATA = ["trainer.epochs=1", "trainer.progress=false", "evaluator=none"]  # for cases that switch data=


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("earlier") / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert main_in_process(monkeypatch, f"hydra.run.dir={run_dir}", *EARLIER_RUN) == 0
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    return run_dir


@pytest.fixture(scope="module")
def unreadable_images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    return folder


# (overrides, what the message must name). {earlier}, {images} and {tmp} are filled in per test.
# A case without task= or resume= of its own trains on top of EARLIER_RUN with resume={earlier}.
CASES = [
    # data
    (["data.num_samples=-5"], "data.num_samples"),
    (["data.noise=abc"], "data.noise"),
    (["data.val_fraction=1.5"], "data.val_fraction"),
    (["data.seed=-1"], "data.seed"),
    (["data=image_folder", "data.root={images}"], "data.root"),
    # model
    (["model.hidden_dim=0"], "model.hidden_dim"),
    (["model.dropout=1.5"], "model.dropout"),
    (["model.num_layers=abc"], "model.num_layers"),
    (["data=digits", "model.num_groups=5"], "model.num_groups"),
    (["data=digits", "model.attention_resolutions=[3]"], "model.attention_resolutions"),
    # method
    (["method.loss_weighting=huber"], "method.loss_weighting"),
    (["method.num_timesteps=abc"], "method.num_timesteps"),
    (["method.snr_gamma=-1"], "method.snr_gamma"),
    (["method.cond_drop_prob=2"], "method.cond_drop_prob"),
    (["method=paint"], "method"),
    # schedule
    (["schedule.beta_end=2"], "schedule.beta_end"),
    (["schedule.beta_start=0.1", "schedule.beta_end=0.01"], "schedule.beta_start"),
    (["schedule=cosine", "schedule.max_beta=0"], "schedule.max_beta"),
    (["schedule=sigmoid", "schedule.tau=-1"], "schedule.tau"),
    (["schedule.zero_terminal_snr=true"], "schedule.zero_terminal_snr"),
    (["schedule=warp"], "schedule"),
    # trainer
    (["trainer.epochs=abc"], "trainer.epochs"),
    (["trainer.epochs=1.5"], "trainer.epochs"),
    (["trainer.batch_size=0"], "trainer.batch_size"),
    (["trainer.device=tpu"], "trainer.device"),
    (["trainer.precision=fp16"], "trainer.precision"),
    (["trainer.grad_clip=-1"], "trainer.grad_clip"),
    (["trainer.betas=[0.9]"], "trainer.betas"),
    (["trainer.betas=[2,0.9]"], "trainer.betas"),
    (["trainer.min_lr_ratio=2"], "trainer.min_lr_ratio"),
    (["trainer.progress=maybe"], "trainer.progress"),
    (["++trainer.checkpoint_every_n_steps=-1"], "trainer.checkpoint_every_n_steps"),
    (["++trainer.skip_nonfinite=sometimes"], "trainer.skip_nonfinite"),
    (["trainer.lrr=1"], "trainer.lrr"),
    (["trainer.lr=["], "trainer.lr"),
    (["+trainer.lr=1"], "trainer.lr"),
    # sampler
    (["sampler.steps=5000"], "sampler.steps"),
    (["sampler.eta=-1"], "sampler.eta"),
    (["sampler.timestep_spacing=random"], "sampler.timestep_spacing"),
    (["sampler.batch_size=abc"], "sampler.batch_size"),
    # logger
    (["logger=wandb", "logger.mode=sometimes"], "logger.mode"),
    (["logger=nope"], "logger"),
    # evaluator
    (["evaluator=points", "evaluator.num_samples=0"], "evaluator.num_samples"),
    (["evaluator=points", "evaluator.every_n_epochs=-1"], "evaluator.every_n_epochs"),
    (["evaluator=points", "evaluator.sampler_steps=[0]"], "evaluator.sampler_steps"),
    (["evaluator=digits"], "evaluator=digits"),
    # checkpoint
    (["checkpoint.save_every_n_epochs=0"], "checkpoint.save_every_n_epochs"),
    (["checkpoint.keep_last_k=-1"], "checkpoint.keep_last_k"),
    # top level
    (["seed=abc"], "seed"),
    (["nokey=3"], "nokey"),
    (["resume={earlier}/config.yaml"], "resume="),
    (["resume={earlier}", "model.hidden_dim=64"], "resume"),
    (["task=sample", "run_dir={earlier}/checkpoints"], "run_dir="),
    (["task=evaluate", "run_dir={earlier}", "evaluator=points", "sampler.steps=0"], "sampler.steps"),
    (["task=evaluate", "run_dir={earlier}"], "no evaluator to score with"),  # trained with evaluator=none
    (["task=export"], "run_dir"),
    (["hydra.run.dir={earlier}/config.yaml/new"], "hydra.run.dir"),
]


def expand(case: list[str], **paths: Path) -> list[str]:
    return [item.format(**paths) for item in case]


@pytest.mark.parametrize(("case", "key"), CASES, ids=[" ".join(case) for case, _ in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_the_earlier_run_alone(
    earlier_run, unreadable_images, tmp_path, monkeypatch, capsys, case, key
):
    overrides = expand(case, earlier=earlier_run, images=unreadable_images, tmp=tmp_path)
    trains = not any(o.split("=")[0] in ("task", "resume") for o in overrides)
    new_dir = tmp_path / "new"
    config = OTHER_DATA if any(o.startswith("data=") for o in overrides) else EARLIER_RUN
    base = [f"hydra.run.dir={new_dir}", *config] + ([f"resume={earlier_run}"] if trains else [])
    before = tree_digest(earlier_run)
    capsys.readouterr()

    code = main_in_process(monkeypatch, *base, *overrides)

    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and key in lines[0], err
    assert tree_digest(earlier_run) == before, "an earlier run's files changed"
    assert not new_dir.exists(), "nothing may be written for a bad input"


def test_debug_switch_shows_the_traceback(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    from diffusion.runtime.checks import ConfigError

    with pytest.raises(ConfigError, match="trainer.epochs"):
        main_in_process(monkeypatch, f"hydra.run.dir={tmp_path / 'run'}", *EARLIER_RUN, "trainer.epochs=abc")
    assert os.environ["HYDRA_FULL_ERROR"] == "1"


def test_unknown_option_from_the_shell_is_one_line_and_exit_2(tmp_path):
    """Needs run.py's command line to wrap the Hydra entry point in guard_command_line."""
    result = run_py(tmp_path, f"hydra.run.dir={tmp_path / 'run'}", "schedule=warp")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: schedule=warp is not an option of schedule; choose one of: cosine, linear, sigmoid"
    ]
    assert not (tmp_path / "run").exists()


def _drop_file_permission_override() -> None:
    # Root writes into read-only directories; without CAP_DAC_OVERRIDE (1) and CAP_DAC_READ_SEARCH (2) in its
    # bounding set, the child process started by exec obeys the permission bits like any user.
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_output_directory_under_a_read_only_directory(tmp_path):
    """Needs run.py's command line to wrap the Hydra entry point in guard_command_line."""
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    target = read_only / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DIFFUSION_DEBUG": "0"}
    try:
        result = subprocess.run(
            [sys.executable, str(ROOT / "run.py"), f"hydra.run.dir={target}", *EARLIER_RUN],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
            preexec_fn=_drop_file_permission_override if os.geteuid() == 0 else None,
        )
    except subprocess.SubprocessError as error:
        pytest.skip(f"cannot drop root's permission override here: {error}")
    finally:
        read_only.chmod(0o755)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: cannot write {target} (Permission denied); choose a writable hydra.run.dir"
    ]
    assert not target.exists()


def test_missing_plugin_option_names_the_install_command():
    from hydra.errors import MissingConfigException

    from diffusion.app.errors import _composition_message

    error = MissingConfigException("missing", missing_cfg_file="hydra/sweeper/optuna", options=["basic"])
    message = _composition_message(error)
    assert "optuna" in message and "pip install" in message and "\n" not in message



def test_a_key_the_chosen_option_does_not_take_is_one_line(tmp_path):
    """A preset's model keys kept after choosing another model: one line naming the key, exit 2."""
    result = run_py(tmp_path, "task=summary", "experiment=mnist_dit", "model=edm2_unet")
    assert result.returncode == 2
    assert "model.patch_size is not an argument of diffusion.models.EDM2UNet: drop it with ~model.patch_size" \
        in result.stderr
    assert "Traceback" not in result.stderr

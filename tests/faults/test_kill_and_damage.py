"""Fault injection, for real: kill ``run.py`` at random steps and mid-write, damage and forge checkpoints, make
the loss blow up, and check that nothing is lost and nothing forged runs.

Interrupted runs resume with ``resume=auto`` in the same ``hydra.run.dir`` and must end bit for bit where the
uninterrupted run ends (CPU, one thread, same seed): weights, EMA, optimizer, LR schedule, RNG states, loss
histories, the ``best`` and periodic checkpoints and the final samples.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from kill_resume import (CHAOS, EPOCHS, FAULT_RUN, STEPS_PER_EPOCH, Session, assert_identical, assert_same_run,
                         comparable, saved_step)
from runs import ROOT, child_env, main_in_process, tree_digest
from safetensors.torch import save as save_safetensors

from diffusion.storage.checkpoint import CHECKPOINT_KEYS, FORMAT
from diffusion.data import MoonsData
from diffusion.data.base import DataSplits
from diffusion.storage.export import export_weights, load_exported
from diffusion.storage.file_manager import CheckpointError, FileManager, load_checkpoint



@pytest.fixture(autouse=True)
def one_thread():
    """Like the child processes: on two busy cores a second thread makes a tiny model several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one must match. A fresh process, as users run it: modules
    imported lazily after seeding may draw from Python's `random`, whose state the checkpoints carry."""
    cwd = tmp_path_factory.mktemp("reference")
    session = Session(cwd, cwd / "run")
    assert session.process.wait(timeout=300) == 0, session.stderr()
    last = load_checkpoint(cwd / "run" / "checkpoints" / "last.pt")
    assert last["train_state"]["global_step"] == EPOCHS * STEPS_PER_EPOCH and len(last["train_state"]["train_losses"]) == EPOCHS
    return cwd / "run"


# --------------------------------------------------------------------------------------------------------
# Kills
# --------------------------------------------------------------------------------------------------------
def finish_in_process(monkeypatch: pytest.MonkeyPatch, run_dir: Path) -> None:
    """The last ``resume=auto``, in this process: it restores every RNG state before its first step, so it
    continues bit for bit like a child process would, without the interpreter start-up."""
    assert main_in_process(monkeypatch, f"hydra.run.dir={run_dir}", *FAULT_RUN) == 0


def test_sigkill_at_random_steps_then_resume_ends_bit_for_bit_as_the_uninterrupted_run(reference, tmp_path,
                                                                                        monkeypatch):
    run_dir, total = tmp_path / "run", EPOCHS * STEPS_PER_EPOCH
    targets = sorted(CHAOS.sample(range(2, total - 4), 3))
    killed = []
    for target in targets:
        session = Session(tmp_path, run_dir)
        reached = session.wait_for_step(target)
        assert session.stop(signal.SIGKILL) == -signal.SIGKILL, f"finished before the kill at {target}"
        killed.append((reached, saved_step(run_dir)))
    finish_in_process(monkeypatch, run_dir)
    assert_same_run(run_dir, reference, f"SIGKILLed at (step logged, step checkpointed) {killed}")


def test_sigterm_and_sigint_save_exit_with_their_codes_and_resume_exactly(reference, tmp_path, monkeypatch):
    run_dir, stops = tmp_path / "run", []
    for sig, code, target in ((signal.SIGTERM, 143, CHAOS.randint(3, 15)), (signal.SIGINT, 130, CHAOS.randint(22, 34))):
        session = Session(tmp_path, run_dir)
        session.wait_for_step(target)
        assert session.stop(sig) == code, session.stderr()
        message = session.stderr().strip().splitlines()[-1]
        stopped = int(re.search(rf"stopped by {sig.name} at step (\d+)", message).group(1))
        assert "resume=auto" in message and str(run_dir) in message, message
        assert "Traceback" not in session.stderr()
        assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["train_state"]["global_step"] == stopped, "saved on the signal"
        stops.append((sig.name, stopped))
    finish_in_process(monkeypatch, run_dir)
    assert_same_run(run_dir, reference, f"stopped at {stops}")


SIGTERM_AT = """
import os, signal, time
import diffusion.training.trainer as trainer

where = os.environ["SIGTERM_AT"]
loop, validate = trainer.Trainer.train, trainer.Trainer.validate


def train_then_sigterm(self):
    summary = loop(self)
    if where == "after the loop":  # as torchrun stops a surviving rank: the loop's own handling has ended
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
    return summary


def validate_then_sigterm(self):
    if where == "last validation" and self.state.epoch + 1 == self.epochs:  # after the last step's check
        os.kill(os.getpid(), signal.SIGTERM)
    return validate(self)


trainer.Trainer.train, trainer.Trainer.validate = train_then_sigterm, validate_then_sigterm
"""


@pytest.mark.parametrize(("where", "message"), [("after the loop", "outside the training loop"),
                                                ("last validation", f"at step {STEPS_PER_EPOCH};")])
def test_sigterm_around_the_training_loop_releases_the_lock_and_exits_143_before_sampling(tmp_path, where, message):
    """A stop signal in a run's setup or teardown, outside the loop's own handling, ends it through every ``with``:
    the run lock is released, the log closed, one line says what was kept. Before, SIGTERM's default action ended
    the process there and left ``run.lock`` to be taken over as stale (the elastic restart test's flake). One that
    came after the last step's check (the last epoch's validation) stops the run before it samples."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SIGTERM_AT)
    run_dir = tmp_path / "run"
    env = child_env(PYTHONPATH=f"{tmp_path / 'site'}{os.pathsep}{child_env()['PYTHONPATH']}", SIGTERM_AT=where)
    result = subprocess.run([sys.executable, str(ROOT / "run.py"), f"hydra.run.dir={run_dir}", *FAULT_RUN,
                             "trainer.epochs=1"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 143, result.stderr[-3000:]
    assert lines[-1].startswith(f"stopped by SIGTERM {message}"), lines
    assert f"resume={run_dir}" in lines[-1] and "Traceback" not in result.stderr
    assert not (run_dir / "run.lock").exists()
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert last["train_state"]["global_step"] == STEPS_PER_EPOCH
    assert "sampling from" not in result.stdout and not (run_dir / "samples.npz").exists()


WRITER = """
import sys, torch
from diffusion.storage.checkpoint import CHECKPOINT_KEYS, FORMAT
from diffusion.storage.file_manager import FileManager
manager, step = FileManager(sys.argv[1]), int(sys.argv[2])
weights = torch.empty(4_000_000)  # 16 MB: a write takes a while, so kills land inside one
print("ready", flush=True)
while True:
    step += 1
    state = {key: 0 for key in CHECKPOINT_KEYS}
    state.update(format=FORMAT, train_state={"epoch": 0, "global_step": step}, model_state_dict={"w": weights.fill_(step)})
    manager.save(state, is_best=step % 3 == 0)
    print(step, flush=True)
"""


def test_sigkill_during_checkpoint_writes_leaves_a_loadable_checkpoint(tmp_path):
    manager, step = FileManager(tmp_path / "run"), 0
    for kill in range(3):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(manager.run_dir), str(step)], env=child_env(),
                                  stdout=subprocess.PIPE, text=True)
        assert writer.stdout.readline().strip() == "ready"
        first = int(writer.stdout.readline())  # one save of this process completed: it must never be lost
        time.sleep(CHAOS.uniform(0.0, 0.4))
        writer.kill()
        finished = [first, *(int(line) for line in writer.communicate()[0].split())]
        path, _, damaged = manager.latest_intact()
        assert path is not None and damaged == [], f"kill {kill}: {damaged}"
        state = load_checkpoint(path)
        step = state["train_state"]["global_step"]
        assert torch.all(state["model_state_dict"]["w"] == step), "a checkpoint holds one save's data"
        assert step >= max(finished), "a completed save is never lost"
        for other in manager.checkpoint_dir.glob("*.pt"):
            load_checkpoint(other)  # every file left behind is intact, none only looks damaged


class Crash(BaseException):
    """Stands for a kill: raised between two file operations, caught by nothing in the code under test."""


class CrashingOS:
    """``os`` for diffusion.storage.atomic, raising :class:`Crash` at its ``at``-th rename or removal."""

    def __init__(self, at: int) -> None:
        self.at, self.calls = at, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def _tick(self) -> None:
        self.calls += 1
        if self.calls == self.at:
            raise Crash

    def replace(self, *args: Any) -> None:
        self._tick()
        os.replace(*args)

    def remove(self, *args: Any) -> None:
        self._tick()
        os.remove(*args)


def test_a_kill_between_any_two_file_operations_of_a_save_keeps_a_consistent_checkpoint(tmp_path, monkeypatch):
    import diffusion.storage.atomic as file_manager

    base = {**{key: 0 for key in CHECKPOINT_KEYS}, "format": FORMAT, "model_state_dict": {"w": torch.zeros(8)}}
    at = 0
    while True:
        at += 1
        manager = FileManager(tmp_path / str(at), save_every_n_epochs=1)
        for step in (1, 2):
            manager.save({**base, "train_state": {"epoch": step, "global_step": step}}, is_best=step == 1)
        crashing = CrashingOS(at)
        monkeypatch.setattr(file_manager, "os", crashing)
        try:
            manager.save({**base, "train_state": {"epoch": 3, "global_step": 3}}, is_best=True)
            completed = True
        except Crash:
            completed = False
        monkeypatch.setattr(file_manager, "os", os)
        path, _, damaged = manager.latest_intact()
        assert damaged == [], f"crash at operation {at}: an intact file looks damaged: {damaged}"
        last = load_checkpoint(path)["train_state"]["global_step"]
        assert last in (2, 3), f"crash at operation {at}: resumed from step {last}"
        for other in manager.checkpoint_dir.glob("*.pt"):
            load_checkpoint(other)  # no file is left with another file's sidecar
        if last == 3:  # `last` moved on only after `best` and the periodic copy were written
            assert load_checkpoint(manager.checkpoint_dir / "best.pt")["train_state"]["global_step"] == 3
            assert load_checkpoint(manager.checkpoint_dir / "epoch_0003.pt")["train_state"]["global_step"] == 3
        if completed:
            assert crashing.calls >= 6 and last == 3
            break


# --------------------------------------------------------------------------------------------------------
# Damaged and forged checkpoints
# --------------------------------------------------------------------------------------------------------
def flip_bit(path: Path) -> None:
    payload = bytearray(path.read_bytes())
    payload[len(payload) // 2] ^= 0x10
    path.write_bytes(bytes(payload))


def test_truncated_garbled_or_bit_flipped_checkpoints_are_detected_and_named(reference, tmp_path):
    source = reference / "checkpoints" / "last.pt"
    payload, sidecar = source.read_bytes(), source.with_name("last.pt.sha256").read_text()
    damaged = tmp_path / "damaged.pt"
    truncated = [payload[:cut] for cut in [0, *CHAOS.sample(range(1, len(payload)), 25)]]
    garbled = [CHAOS.randbytes(CHAOS.randint(1, 4096)) for _ in range(10)]
    for data in truncated + garbled:  # no sidecar: the loader itself must notice
        damaged.write_bytes(data)
        with pytest.raises(CheckpointError, match=re.escape(str(damaged))):
            load_checkpoint(damaged)
    damaged.with_name("damaged.pt.sha256").write_text(sidecar)
    for _ in range(25):  # a flip in tensor data would unpickle fine; the sidecar catches every one
        flipped = bytearray(payload)
        flipped[CHAOS.randrange(len(flipped))] ^= 1 << CHAOS.randrange(8)
        damaged.write_bytes(bytes(flipped))
        with pytest.raises(CheckpointError, match="is damaged"):
            load_checkpoint(damaged)


def test_damaged_checkpoints_are_named_and_resume_falls_back_to_the_newest_intact(reference, tmp_path, monkeypatch,
                                                                                  capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    checkpoints = run_dir / "checkpoints"
    last, previous = checkpoints / "last.pt", checkpoints / "last.prev.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # truncated, sidecar gone: torch.load fails
    (checkpoints / "last.pt.sha256").unlink()
    flip_bit(previous)  # still unpickles; only its sidecar tells
    code = main_in_process(monkeypatch, f"hydra.run.dir={run_dir}", *FAULT_RUN, f"trainer.epochs={EPOCHS + 1}")
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"{last} is damaged" in err and f"{previous} is damaged" in err and "falling back" in err, err
    assert f"resuming from {checkpoints / f'epoch_{EPOCHS:04d}.pt'}" in err, err
    resumed = load_checkpoint(last)
    expected = load_checkpoint(reference / "checkpoints" / "last.pt")
    assert resumed["train_state"]["epoch"] == EPOCHS + 1
    assert resumed["train_state"]["train_losses"][:EPOCHS] == expected["train_state"]["train_losses"]


def test_resume_with_no_intact_checkpoint_is_refused_and_changes_nothing(reference, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    for path in (run_dir / "checkpoints").glob("*.pt"):
        flip_bit(path)
    before = tree_digest(run_dir)
    assert main_in_process(monkeypatch, f"hydra.run.dir={run_dir}", *FAULT_RUN) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: resume={run_dir}: no intact checkpoint") and "last.pt is damaged" in err, err
    assert len(err.strip().splitlines()) == 1
    assert tree_digest(run_dir) == before


class Exploit:
    """Unpickling this calls ``Path.touch(marker)``: what a forged checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def forge_checkpoint(path: Path, marker: Path) -> Path:
    """A checkpoint carrying a payload, with a matching sidecar (the digest vouches for bytes, not for safety)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model_state_dict": {}, "epoch": 1, "payload": Exploit(marker)}, path)
    path.with_name(path.name + ".sha256").write_text(hashlib.sha256(path.read_bytes()).hexdigest())
    return path


def test_forged_checkpoint_is_refused_everywhere_and_its_code_never_runs(reference, tmp_path, monkeypatch, capsys):
    marker = tmp_path / "code-ran"
    evil = forge_checkpoint(tmp_path / "evil.pt", marker)
    sample_dir = tmp_path / "forged-run"  # a run directory as someone might share it
    forge_checkpoint(sample_dir / "checkpoints" / "best.pt", marker)
    shutil.copy(reference / "config.yaml", sample_dir / "config.yaml")
    auto_dir = tmp_path / "auto"
    forge_checkpoint(auto_dir / "checkpoints" / "last.pt", marker)
    attempts = [
        ([*FAULT_RUN, f"resume={evil}"], str(evil)),  # the later resume= wins
        (["task=sample", f"run_dir={sample_dir}"], str(sample_dir / "checkpoints" / "best.pt")),
        ([f"hydra.run.dir={auto_dir}", *FAULT_RUN], str(auto_dir / "checkpoints" / "last.pt")),
    ]
    for overrides, named in attempts:
        if not any(o.startswith("hydra.run.dir=") for o in overrides):
            overrides = [f"hydra.run.dir={tmp_path / 'out'}", *overrides]
        assert main_in_process(monkeypatch, *overrides) == 2, overrides
        err = capsys.readouterr().err
        assert named in err and "refused" in err and len(err.strip().splitlines()) == 1, err
        assert not marker.exists(), f"the payload ran: {overrides}"
    assert not (tmp_path / "out").exists()


def test_run_config_that_would_call_arbitrary_code_is_refused(reference, tmp_path, monkeypatch, capsys):
    """``task=sample`` instantiates the config.yaml of the run it samples from: its targets must be ours.
    Needs the app's load_source_config to call check_safe_targets."""
    marker = tmp_path / "code-ran"
    run_dir = tmp_path / "shared-run"
    shutil.copytree(reference, run_dir)
    config = OmegaConf.load(run_dir / "config.yaml")
    config.data = {"_target_": "pathlib.Path.touch", "_args_": [str(marker)]}  # built first by task=sample
    OmegaConf.save(config, run_dir / "config.yaml")
    code = main_in_process(monkeypatch, f"hydra.run.dir={tmp_path / 'out'}", "task=sample", f"run_dir={run_dir}")
    err = capsys.readouterr().err
    assert not marker.exists(), "instantiating a shared run's config ran code"
    assert code == 2 and "pathlib.Path.touch" in err and "refused" in err, err


# --------------------------------------------------------------------------------------------------------
# Diverging loss
# --------------------------------------------------------------------------------------------------------
class PoisonedMoons(MoonsData):
    """Two moons with one NaN training point: the one batch per epoch holding it has a NaN loss."""

    def _load(self) -> DataSplits:
        splits = super()._load()
        train = splits.train.clone()
        train[0] = float("nan")
        return DataSplits(train, splits.val, splits.train_labels, splits.val_labels)


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    code = main_in_process(monkeypatch, f"hydra.run.dir={run_dir}", *FAULT_RUN, "trainer.lr=1e30")
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    step = int(re.fullmatch(r"error: loss became (nan|inf|-inf) at step (\d+) \(epoch 1\); .*", err.strip()).group(2))
    assert "trainer.skip_nonfinite=true" in err and str(run_dir / "checkpoints" / "last.pt") in err
    kept = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert kept["train_state"]["global_step"] == step - 1, "the checkpoint of the step before the bad one is kept"
    assert all(torch.isfinite(w).all() for w in kept["model_state_dict"].values())


def test_skip_nonfinite_skips_and_counts_bad_batches(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    code = main_in_process(monkeypatch, f"hydra.run.dir={run_dir}", *FAULT_RUN, "++trainer.skip_nonfinite=true",
                           f"data._target_={__name__}.PoisonedMoons")
    assert code == 0, capsys.readouterr().err
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert last["train_state"]["skipped_steps"] == EPOCHS, "one poisoned batch per epoch"
    assert last["train_state"]["global_step"] == EPOCHS * STEPS_PER_EPOCH, "a skipped step keeps the data order and LR aligned"
    assert all(np.isfinite(last["train_state"]["train_losses"])), "skipped batches stay out of the epoch mean"
    assert len(re.findall(r"skipped step \d+: non-finite loss", (run_dir / "train.log").read_text())) == EPOCHS
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in epochs if "epoch" in r] == [1, 2, 3]


# --------------------------------------------------------------------------------------------------------
# Export for sharing
# --------------------------------------------------------------------------------------------------------
def test_export_round_trip_keeps_weights_and_config(reference, tmp_path):
    best = reference / "checkpoints" / "best.pt"
    ckpt = load_checkpoint(best)
    for use_ema, expected in ((True, ckpt["ema_state_dict"]["shadow"]), (False, ckpt["model_state_dict"])):
        path = export_weights(best, tmp_path / f"ema-{use_ema}.safetensors", use_ema=use_ema)
        weights, config = load_exported(path)
        assert_identical(comparable(weights), comparable(dict(expected)), str(path))
        assert config == ckpt["config"]
    flip_bit(path)
    with pytest.raises(CheckpointError, match="damaged"):
        load_exported(path)


def test_exported_config_naming_foreign_code_is_refused(tmp_path):
    forged = tmp_path / "forged.safetensors"
    config = {"model": {"_target_": "os.system", "command": "touch owned"}}
    metadata = {"format": "diffusion-weights/1", "config": json.dumps(config)}
    forged.write_bytes(save_safetensors({"w": torch.zeros(2)}, metadata=metadata))
    with pytest.raises(CheckpointError, match=r"model\._target_='os\.system'"):
        load_exported(forged)


def test_sampler_loads_exported_weights(reference, tmp_path):
    """The Sampler samples from an export exactly as from the checkpoint. Needs Sampler.load_weights."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from diffusion.app.method_config import make_method
    from diffusion.sampling.sampler import Sampler

    weights_path = export_weights(reference / "checkpoints" / "best.pt", tmp_path / "moons.safetensors")
    _, config = load_exported(weights_path)
    model, method = instantiate(config["model"]), make_method(OmegaConf.create(config["method"]))
    sampler = Sampler(model, method, (2,), num_samples=16, seed=config["seed"], device="cpu")
    assert sampler.load_weights(weights_path) == config
    expected = np.load(reference / "samples.npz")["samples"]
    np.testing.assert_allclose(sampler.sample().samples.numpy(), expected, atol=1e-5)


def test_export_task_writes_safetensors_the_sample_task_reads(reference, tmp_path, monkeypatch, capsys):
    """Needs run.py's task=export and task=sample run_dir=<file>.safetensors."""
    out = tmp_path / "export"
    assert main_in_process(monkeypatch, f"hydra.run.dir={out}", "task=export", f"run_dir={reference}") == 0
    weights, config = load_exported(out / "weights.safetensors")
    best = load_checkpoint(reference / "checkpoints" / "best.pt")
    assert_identical(comparable(weights), comparable(dict(best["ema_state_dict"]["shadow"])))
    sampled = tmp_path / "sample"
    assert main_in_process(monkeypatch, f"hydra.run.dir={sampled}", "task=sample",
                           f"run_dir={out / 'weights.safetensors'}", "sampler.num_samples=16",
                           "sampler.precision=fp32") == 0, capsys.readouterr().err
    np.testing.assert_allclose(np.load(sampled / "samples.npz")["samples"],
                               np.load(reference / "samples.npz")["samples"], atol=1e-5)

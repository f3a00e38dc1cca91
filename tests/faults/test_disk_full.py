"""A full disk or failing file system: a save that fails at any write, fsync, link or rename keeps every earlier
checkpoint intact and loadable, leaves no temporary file, and raises one line naming the file and the error.
Injected at each operation of a save, for ENOSPC, EDQUOT and EIO, and for real on a 256 KB tmpfs."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

import diffusion.storage.atomic as atomic
from diffusion.storage.atomic import SaveError, atomic_write_bytes, atomic_write_text
from diffusion.storage.checkpoint import CHECKPOINT_KEYS, FORMAT
from diffusion.storage.file_manager import FileManager
from diffusion.storage.safe_load import load_checkpoint
from diffusion.loggers.file import FileLogger

ERRORS = [errno.ENOSPC, errno.EDQUOT, errno.EIO]
FAULTY_OPERATIONS = ("write", "fsync", "replace", "link", "remove")


class FailingOS:
    """``os`` for diffusion.storage.atomic whose ``at``-th write, fsync, link, rename or removal fails with
    ``error``; a removal of a temporary file during cleanup is not counted (it must not hide the first error)."""

    def __init__(self, at: int, error: int) -> None:
        self.at, self.error, self.calls, self.failed = at, error, 0, None

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(os, name)
        if name not in FAULTY_OPERATIONS:
            return attribute

        def operation(*args: Any, **kwargs: Any) -> Any:
            if self.failed is None:
                self.calls += 1
                if self.calls == self.at:
                    self.failed = name
                    raise OSError(self.error, os.strerror(self.error))
            return attribute(*args, **kwargs)

        return operation


def state(step: int) -> dict[str, Any]:
    return {**{key: 0 for key in CHECKPOINT_KEYS}, "format": FORMAT, "train_state": {"epoch": step, "global_step": step},
            "model_state_dict": {"w": torch.full((64,), float(step))}}


def temporaries(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.name.endswith(".tmp")]


def assert_earlier_checkpoints_intact(manager: FileManager, label: str) -> None:
    directory = manager.checkpoint_dir
    assert temporaries(directory) == [], f"{label}: temporary files left behind"
    path, _, damaged = manager.latest_intact()
    assert damaged == [] and path is not None, f"{label}: {damaged}"
    assert load_checkpoint(path)["train_state"]["global_step"] in (2, 3), label
    steps = {p.name: load_checkpoint(p)["train_state"]["global_step"] for p in directory.glob("*.pt")}  # every file loads
    assert steps["epoch_0001.pt"] == 1 and steps["epoch_0002.pt"] == 2, label
    assert steps["best.pt"] in (1, 3), label
    assert 2 in steps.values(), f"{label}: the newest completed save (step 2) was lost: {steps}"


@pytest.mark.parametrize("error", ERRORS, ids=[errno.errorcode[e] for e in ERRORS])
def test_a_failure_at_each_operation_of_a_save_keeps_earlier_checkpoints(tmp_path, monkeypatch, error):
    at, faults = 0, []
    while True:
        at += 1
        manager = FileManager(tmp_path / str(at), save_every_n_epochs=1)
        manager.save(state(1), is_best=True)
        manager.save(state(2), is_best=False)
        failing = FailingOS(at, error)
        monkeypatch.setattr(atomic, "os", failing)
        try:
            manager.save(state(3), is_best=True)
        except SaveError as raised:
            message = str(raised)
            assert "\n" not in message and os.strerror(error) in message, message
            assert str(manager.checkpoint_dir) in message and raised.errno == error
            faults.append(failing.failed)
        finally:
            monkeypatch.setattr(atomic, "os", os)
        if failing.failed is None:  # every operation of the save has had its fault
            assert load_checkpoint(manager.checkpoint_dir / "last.pt")["train_state"]["global_step"] == 3
            break
        assert_earlier_checkpoints_intact(manager, f"{errno.errorcode[error]} at {failing.failed} #{at}")
        manager.save(state(3), is_best=True)  # the disk has room again: the next save succeeds
        assert load_checkpoint(manager.checkpoint_dir / "last.pt")["train_state"]["global_step"] == 3
        assert load_checkpoint(manager.checkpoint_dir / "last.prev.pt")["train_state"]["global_step"] in (2, 3)
    assert {"write", "fsync", "replace", "link"} <= set(faults) and len(faults) >= 20, faults


@pytest.mark.parametrize("error", ERRORS, ids=[errno.errorcode[e] for e in ERRORS])
def test_atomic_write_bytes_keeps_the_old_file_at_each_failure(tmp_path, monkeypatch, error):
    target = tmp_path / "eval.json"
    atomic_write_text(target, '{"fd": 1.0}')
    at = 0
    while True:
        at += 1
        failing = FailingOS(at, error)
        monkeypatch.setattr(atomic, "os", failing)
        try:
            atomic_write_bytes(target, b'{"fd": 2.0}' * 1000)
        except SaveError as raised:
            assert str(raised).startswith(f"could not write {target}: {os.strerror(error)}")
        finally:
            monkeypatch.setattr(atomic, "os", os)
        if failing.failed is None:
            break
        if failing.failed != "fsync" or at < 3:  # only the directory fsync comes after the rename
            assert target.read_text() == '{"fd": 1.0}', f"fault at {failing.failed} #{at}"
        assert temporaries(tmp_path) == []
    assert at >= 4


def test_logger_write_failure_is_one_line_naming_the_file(tmp_path, monkeypatch):
    logger = FileLogger(tmp_path, console=False)
    logger.log({"epoch": 1, "val/loss": 0.5}, step=1)

    def full(*args: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(logger._metrics._handle, "write", full)
    with pytest.raises(SaveError, match=f"could not write {tmp_path / 'metrics.jsonl'}: No space left"):
        logger.log({"epoch": 2, "val/loss": 0.4}, step=2)
    assert '"val/loss": 0.5' in (tmp_path / "metrics.jsonl").read_text()  # earlier lines stay


# --------------------------------------------------------------------------------------------------------
# A real full file system
# --------------------------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a 256 KB tmpfs needs root (mount -t tmpfs); the injected faults above still run")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 1024)
    except OSError as error:
        assert error.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def test_a_real_full_disk_keeps_earlier_checkpoints_and_names_the_file(small_disk):
    manager = FileManager(small_disk / "run", save_every_n_epochs=1)
    manager.save(state(1), is_best=True)
    manager.save(state(2), is_best=False)
    (small_disk / "run" / "eval.json").write_text("{}")
    filler = fill(small_disk)
    with pytest.raises(SaveError) as raised:
        manager.save(state(3), is_best=True)
    assert "No space left on device" in str(raised.value) and str(manager.checkpoint_dir) in str(raised.value)
    assert_earlier_checkpoints_intact(manager, "tmpfs full")
    with pytest.raises(SaveError, match="eval.json: No space left on device"):
        atomic_write_text(small_disk / "run" / "eval.json", '{"fd": 1.0}' * 2000)
    assert (small_disk / "run" / "eval.json").read_text() == "{}" and temporaries(small_disk) == []
    filler.unlink()
    manager.save(state(3), is_best=True)  # space again: training goes on
    assert load_checkpoint(manager.checkpoint_dir / "last.pt")["train_state"]["global_step"] == 3

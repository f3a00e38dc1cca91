"""How a process that joined a process group ends: its exit status as Python would give it, without interpreter
finalisation (PyTorch's race between gloo's worker threads and finalisation aborts a finished rank)."""

from __future__ import annotations

import pytest

from diffusion.app.jobs import command_line
from diffusion.runtime import distributed


class HardExit(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


@pytest.fixture
def joined(monkeypatch):
    """This process counts as a torchrun rank; ``os._exit`` raises HardExit (with its status) instead."""
    monkeypatch.setattr(distributed, "_joined", True)

    def hard_exit(status: int) -> None:
        raise HardExit(status)

    monkeypatch.setattr(distributed.os, "_exit", hard_exit)
    flushed = []
    monkeypatch.setattr(distributed.logging, "shutdown", lambda: flushed.append(True))
    return flushed


@pytest.mark.parametrize(("code", "status"), [(None, 0), (0, 0), (2, 2), (143, 143)])
def test_a_rank_leaves_with_its_status_without_finalisation(joined, code, status):
    with pytest.raises(HardExit) as leaving:
        distributed.exit_process(code)
    assert leaving.value.status == status
    assert joined == [True]  # logging handlers flushed first


def test_a_message_as_status_is_printed_and_exits_1_as_python_does(joined, capsys):
    with pytest.raises(HardExit) as leaving:
        distributed.exit_process("error: trainer.lr=-1: must be positive")
    assert leaving.value.status == 1
    assert capsys.readouterr().err == "error: trainer.lr=-1: must be positive\n"


def test_a_process_that_joined_no_group_exits_as_usual(monkeypatch):
    monkeypatch.setattr(distributed, "_joined", False)
    with pytest.raises(SystemExit) as leaving:
        distributed.exit_process(2)
    assert leaving.value.code == 2


def test_the_command_line_ends_a_rank_through_exit_process(joined):
    with pytest.raises(HardExit) as leaving:
        with command_line():
            pass
    assert leaving.value.status == 0
    with pytest.raises(HardExit) as leaving:
        with command_line():
            raise SystemExit(2)  # a user error's exit, after its one line
    assert leaving.value.status == 2


def test_the_command_line_of_a_single_process_returns_and_raises_as_usual(monkeypatch):
    monkeypatch.setattr(distributed, "_joined", False)
    with command_line():
        pass
    with pytest.raises(SystemExit) as leaving:
        with command_line():
            raise SystemExit(2)
    assert leaving.value.code == 2

"""One writer per run directory, with real processes: a live holder refuses a second one, a SIGKILLed holder's
lock is taken over, a reused pid and a silent other host are recognized, and racing processes elect one."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diffusion.storage.run_lock import LOCK_NAME, RunLock, process_start
from diffusion.runtime.checks import ConfigError

ROOT = Path(__file__).resolve().parents[2]
HOLDER = """
import sys, time
from diffusion.storage.run_lock import RunLock
try:
    with RunLock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(float(sys.argv[2]))
except Exception as error:
    print(f"refused: {error}", flush=True)
    sys.exit(2)
"""


def start_holder(run_dir: Path, seconds: float = 60.0) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RANK", None)
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir), str(seconds)], env=env,
                            stdout=subprocess.PIPE, text=True)


def write_lock(run_dir: Path, age_s: float = 0.0, **fields) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": process_start(os.getpid()),
              "boot_id": None, "started": time.time() - age_s, **fields}
    path = run_dir / LOCK_NAME
    path.write_text(json.dumps(record))
    os.utime(path, (time.time() - age_s, time.time() - age_s))
    return path


def test_live_holder_refuses_a_second_process_naming_host_and_pid(tmp_path):
    holder = start_holder(tmp_path / "run")
    try:
        assert holder.stdout.readline().strip() == "held"
        second = start_holder(tmp_path / "run", 0)
        out, _ = second.communicate(timeout=30)
        assert second.returncode == 2
        assert f"pid {holder.pid} on host {socket.gethostname()}" in out and "\n" not in out.strip()
        with pytest.raises(ConfigError, match=f"pid {holder.pid}"):
            with RunLock(tmp_path / "run"):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_sigkilled_holders_lock_is_taken_over_with_a_warning(tmp_path):
    holder = start_holder(tmp_path / "run")
    assert holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (tmp_path / "run" / LOCK_NAME).is_file()  # a kill leaves the lock behind
    with pytest.warns(UserWarning, match=f"pid {holder.pid} no longer runs"):
        with RunLock(tmp_path / "run"):
            assert json.loads((tmp_path / "run" / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (tmp_path / "run" / LOCK_NAME).exists()  # released on exit


def test_unreaped_killed_holder_counts_as_gone(tmp_path):
    holder = start_holder(tmp_path / "run")
    assert holder.stdout.readline().strip() == "held"
    os.kill(holder.pid, signal.SIGKILL)
    time.sleep(0.3)  # a zombie until wait(): it still answers kill(pid, 0)
    try:
        with pytest.warns(UserWarning, match="no longer runs"):
            with RunLock(tmp_path / "run"):
                pass
    finally:
        holder.wait()


def test_reused_pid_is_recognized_by_its_start_time(tmp_path):
    write_lock(tmp_path, pid=os.getppid(), pid_start="1")  # a live pid, but not the process that locked
    with pytest.warns(UserWarning, match="now belongs to another process"):
        with RunLock(tmp_path):
            pass


def test_lock_from_before_a_reboot_is_stale(tmp_path):
    write_lock(tmp_path, pid=os.getppid(), pid_start=None, boot_id="another-boot")
    with pytest.warns(UserWarning, match="rebooted"):
        with RunLock(tmp_path):
            pass


def test_other_host_is_refused_while_its_heartbeat_is_fresh_then_taken_over(tmp_path):
    path = write_lock(tmp_path, age_s=5.0, host="gpu-node-7", pid=4242)
    with pytest.raises(ConfigError) as refused:
        with RunLock(tmp_path, stale_after_s=60):
            pass
    message = str(refused.value)
    assert "pid 4242 on host gpu-node-7" in message and f"remove {path}" in message and "\n" not in message
    os.utime(path, (time.time() - 120, time.time() - 120))
    with pytest.warns(UserWarning, match="no heartbeat from host gpu-node-7"):
        with RunLock(tmp_path, stale_after_s=60):
            pass


def test_heartbeat_refreshes_the_lock_mtime(tmp_path):
    with RunLock(tmp_path, heartbeat_s=0.05) as lock:
        os.utime(lock.path, (0, 0))
        time.sleep(0.3)
        assert time.time() - lock.path.stat().st_mtime < 5


def test_only_rank_zero_takes_the_lock_and_nesting_is_one_holder(tmp_path):
    with RunLock(tmp_path, rank=1):
        assert not (tmp_path / LOCK_NAME).exists()
    with RunLock(tmp_path, rank=0):
        with RunLock(tmp_path, rank=0):  # train then sample in one process
            pass
        assert (tmp_path / LOCK_NAME).exists()
    assert not (tmp_path / LOCK_NAME).exists()


def test_processes_racing_for_a_stale_lock_elect_exactly_one(tmp_path):
    write_lock(tmp_path / "run", pid=os.getppid(), pid_start="1")
    racers = [start_holder(tmp_path / "run", 3.0) for _ in range(4)]
    outputs = [racer.communicate(timeout=60)[0] for racer in racers]
    assert sum(out.startswith("held") for out in outputs) == 1, outputs
    assert sum(out.startswith("refused") for out in outputs) == 3, outputs

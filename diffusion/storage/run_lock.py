"""One writer per run directory: a lock file that names the process writing there.

``run.lock`` records host, pid, the pid's start time and the boot id; it is created by hard-linking a written
temporary file (one creator, never half written, also on NFS), and a stale lock is taken over under ``fcntl.flock``.
Stale: on this host the pid is gone, reused or the host rebooted; on another, the heartbeat (the file's mtime) is
older than ``stale_after_s``, so a SLURM requeue on another node can resume.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType

from diffusion.runtime.checks import ConfigError

LOCK_NAME = "run.lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0
_held: dict[Path, int] = {}  # lock path -> nesting depth in this process (train, then sample, in one process)


@dataclass(frozen=True)
class LockHolder:
    """Who holds a run directory: written into ``run.lock`` as JSON."""

    host: str
    pid: int
    pid_start: str | None  # /proc/<pid>/stat start time (clock ticks since boot); None off Linux
    boot_id: str | None
    started: float  # wall time the lock was taken

    @classmethod
    def this_process(cls) -> LockHolder:
        return cls(socket.gethostname(), os.getpid(), process_start(os.getpid()), boot_id(), time.time())

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"pid {self.pid} on host {self.host} (since {when})"


class RunLock:
    """Context manager holding ``<run_dir>/run.lock`` while this process writes the run directory.

    Ranks other than 0 take no lock. Entering raises ConfigError naming the live holder.
    """

    def __init__(
        self,
        run_dir: str | Path,
        rank: int | None = None,
        heartbeat_s: float = HEARTBEAT_S,
        stale_after_s: float = STALE_AFTER_S,
    ) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.rank = int(os.environ.get("RANK", "0")) if rank is None else rank
        self.heartbeat_s = heartbeat_s
        self.stale_after_s = stale_after_s
        self._record: bytes | None = None
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def __enter__(self) -> RunLock:
        if self.rank != 0:
            return self
        key = self.path.resolve()
        if key in _held:
            _held[key] += 1
            return self
        self.acquire()
        _held[key] = 1
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if self.rank != 0:
            return
        key = self.path.resolve()
        _held[key] -= 1
        if _held[key] == 0:
            del _held[key]
            self.release()

    # ----------------------------------------------------------------------------------------------------
    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = json.dumps(asdict(LockHolder.this_process())).encode()
        temporary = self.path.with_name(f".{LOCK_NAME}.{socket.gethostname()}.{os.getpid()}.tmp")
        temporary.write_bytes(record)
        try:
            with _guard(self.path.with_name(f".{LOCK_NAME}.guard")):
                while True:
                    try:
                        os.link(temporary, self.path)
                        break
                    except FileExistsError:
                        pass
                    try:
                        self._take_over_if_stale()
                    except FileNotFoundError:
                        continue  # released meanwhile: link again
                    os.replace(temporary, self.path)
                    break
        finally:
            temporary.unlink(missing_ok=True)
        self._record = record
        self._heartbeat = threading.Thread(target=self._beat, name="run-lock-heartbeat", daemon=True)
        self._heartbeat.start()

    def release(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        try:
            if self.path.read_bytes() == self._record:  # never remove a lock another process took over
                self.path.unlink()
        except FileNotFoundError:
            pass

    def _take_over_if_stale(self) -> None:
        holder, age = read_holder(self.path)
        if holder is None:
            # Unreadable: written by something else, or cut by a crash of an older version; treat it as stale only
            # once it is old, since a record is written whole before it is linked.
            if age < self.stale_after_s:
                raise ConfigError(
                    f"{self.path} exists but names no holder; if no process writes {self.path.parent}, remove it"
                )
            warnings.warn(f"taking over {self.path}: unreadable and untouched for {age:.0f} s", stacklevel=3)
            return
        reason = stale_reason(holder, age, self.stale_after_s)
        if reason is None:
            raise ConfigError(refusal(self.path, holder, age, self.stale_after_s))
        warnings.warn(f"taking over {self.path} from {holder.describe()}: {reason}", stacklevel=3)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if self.path.read_bytes() != self._record:
                    warnings.warn(f"{self.path} was taken over by another process; this one keeps writing")
                    return
                os.utime(self.path)
            except OSError:
                pass  # a file system hiccup: the next beat tries again


def read_holder(path: Path) -> tuple[LockHolder | None, float]:
    """The holder recorded in a lock file (None if unreadable) and the seconds since its last heartbeat."""
    age = time.time() - path.stat().st_mtime  # FileNotFoundError: released meanwhile
    try:
        return LockHolder(**json.loads(path.read_bytes())), age
    except FileNotFoundError:
        raise
    except (OSError, ValueError, TypeError):
        return None, age


def stale_reason(holder: LockHolder, age: float, stale_after_s: float) -> str | None:
    """Why the holder no longer writes the run directory, or None when it may still."""
    if holder.host != socket.gethostname():
        return f"no heartbeat from host {holder.host} for {age:.0f} s" if age > stale_after_s else None
    if holder.boot_id and boot_id() and holder.boot_id != boot_id():
        return "the host rebooted since"
    if not pid_alive(holder.pid):
        return f"pid {holder.pid} no longer runs"
    if holder.pid_start is not None and process_start(holder.pid) not in (None, holder.pid_start):
        return f"pid {holder.pid} now belongs to another process"
    return None


def refusal(path: Path, holder: LockHolder, age: float, stale_after_s: float) -> str:
    line = f"run directory {path.parent} is being written by {holder.describe()}"
    if holder.host != socket.gethostname():
        return (
            f"{line}, heartbeat {age:.0f} s ago; if that process is gone (check host {holder.host}), "
            f"remove {path}, or wait {max(0.0, stale_after_s - age):.0f} s for the lock to go stale"
        )
    return f"{line}; wait for it or stop it (two writers corrupt its checkpoints), or choose another hydra.run.dir"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return _not_zombie(pid)


def _not_zombie(pid: int) -> bool:
    # A killed child not yet reaped by its parent still answers kill(pid, 0); it writes nothing any more.
    stat = proc_stat(pid)
    return stat is None or stat[0] != "Z"


def process_start(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot (field 22 of /proc/<pid>/stat); None off Linux."""
    stat = proc_stat(pid)
    return stat[19] if stat is not None else None


def proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first); None when unavailable."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


class _guard:
    """``flock`` of a file that is never removed: serializes the stale check and takeover of one host's
    processes (a removed-and-recreated lock file could be held twice)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except OSError as error:
            if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                os.close(self.fd)
                raise
            # A file system without flock: the link above still makes creation atomic.

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)  # closing releases the flock

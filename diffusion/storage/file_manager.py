"""The files of a run's checkpoints: ``last`` and ``best``, periodic copies, cleanup, safe loading.

What a checkpoint holds is :mod:`diffusion.storage.checkpoint`'s business; this module writes, finds and reads the files.

Layout under ``<run_dir>/checkpoints/``: ``last.pt`` (every save; the one before it is kept as
``last.prev.pt``), ``best.pt`` (lowest monitored metric), ``epoch_0010.pt`` (every ``save_every_n_epochs``, the
newest ``keep_last_k`` kept). Each file is written to a temporary name, fsynced and renamed, so a kill mid-write
leaves the previous file intact, and gets a ``.sha256`` sidecar that loading verifies, so a truncated or
bit-flipped file is detected. Files are read with ``torch.load(weights_only=True)``: a checkpoint cannot run
code on load.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import pickle
import re
import secrets
import tempfile
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch

from diffusion.storage import checkpoint
from diffusion.storage.checkpoint import CheckpointError
from diffusion.runtime.checks import check_int

_PERIODIC = re.compile(r"epoch_(\d+)\.pt$")
_SAFE_TARGET_PREFIX = "diffusion."


class Found(NamedTuple):
    """The newest intact checkpoint of a run (None if there is none), its loaded dict, and one line per damaged
    file passed over."""

    path: Path | None
    state: dict[str, Any] | None
    skipped: list[str]


class FileManager:
    """Saves and finds the checkpoints of one run directory.

    Args:
        run_dir: the run directory; checkpoints go to ``run_dir/checkpoints``.
        save_every_n_epochs: also keep ``epoch_NNNN.pt`` every N epochs (None: only last and best).
        keep_last_k: keep only the newest K periodic checkpoints (None: keep all).

    Raises:
        ConfigError: for a non-positive ``save_every_n_epochs`` or ``keep_last_k``.
    """

    def __init__(
        self,
        run_dir: str | Path,
        save_every_n_epochs: int | None = None,
        keep_last_k: int | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        if save_every_n_epochs is not None:
            check_int(save_every_n_epochs, "checkpoint.save_every_n_epochs", minimum=1)
        if keep_last_k is not None:
            check_int(keep_last_k, "checkpoint.keep_last_k", minimum=1)
        self.save_every_n_epochs = save_every_n_epochs
        self.keep_last_k = keep_last_k

    # ----------------------------------------------------------------------------------------------------
    # Saving
    # ----------------------------------------------------------------------------------------------------
    def save(self, state: dict[str, Any], *, is_best: bool, periodic: bool | None = None) -> Path:
        """Write ``last.pt``, plus ``best.pt`` when ``is_best`` and a periodic copy when due.

        ``periodic=None`` decides from the state's epoch and ``save_every_n_epochs``. Returns the path of
        ``last.pt``.

        Raises:
            SaveError: a write failed (full disk, quota, I/O error); the checkpoints saved before stay intact and
                loadable and no temporary file is left.
        """
        missing = [key for key in checkpoint.CHECKPOINT_KEYS if key not in state]
        assert not missing, f"checkpoint state lacks {missing}"
        try:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise SaveError.of(self.checkpoint_dir, error) from error
        _remove_stale_temporaries(self.checkpoint_dir)
        payload = _serialize(state)
        # ``last`` goes last: a kill before it is replaced resumes from the previous ``last`` and redoes this
        # save, so ``best`` and the periodic copies never miss the state that ``last`` has moved past.
        if is_best:
            atomic_write(payload, self.checkpoint_dir / "best.pt")
        if periodic is None:
            periodic = bool(self.save_every_n_epochs) and checkpoint.epoch(state) % self.save_every_n_epochs == 0
        if periodic:
            atomic_write(payload, self.checkpoint_dir / f"epoch_{checkpoint.epoch(state):04d}.pt")
            self._cleanup()
        last = self.checkpoint_dir / "last.pt"
        atomic_write(payload, last, keep_previous=True)
        return last

    def save_as(self, state: dict[str, Any], name: str) -> Path:
        """Write ``checkpoints/<name>`` atomically (e.g. a distillation round's ``round_0008.pt``); never read by
        resume, which looks at ``last`` and the periodic checkpoints only.

        Raises:
            SaveError: as :meth:`save`.
        """
        path = self.checkpoint_dir / name
        try:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise SaveError.of(self.checkpoint_dir, error) from error
        atomic_write(_serialize(state), path)
        return path

    def _cleanup(self) -> None:
        if self.keep_last_k is None:
            return
        for old in self.periodic_checkpoints()[: -self.keep_last_k]:
            old.unlink(missing_ok=True)
            _sidecar(old).unlink(missing_ok=True)

    # ----------------------------------------------------------------------------------------------------
    # Finding and loading
    # ----------------------------------------------------------------------------------------------------
    def save_ema_snapshot(self, snapshot: dict[str, Any]) -> Path:
        """Write a post-hoc EMA snapshot (:meth:`diffusion.training.posthoc_ema.PosthocEMA.snapshot`) atomically as
        ``checkpoints/posthoc_ema/step_NNNNNNNN.pt``; a resumed run rewrites the same step with the same data."""
        directory = self.checkpoint_dir / "posthoc_ema"
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"step_{int(snapshot['step']):08d}.pt"
        atomic_write(_serialize(snapshot), path)
        return path

    def ema_snapshots(self) -> list[dict[str, Any]]:
        """Every post-hoc EMA snapshot of the run, oldest first, each read safely and verified.

        Raises:
            CheckpointError: a damaged snapshot, or none (the run was not trained with ``trainer.ema=posthoc``).
        """
        paths = sorted((self.checkpoint_dir / "posthoc_ema").glob("step_*.pt"))
        if not paths:
            raise CheckpointError(f"no post-hoc EMA snapshots in {self.checkpoint_dir / 'posthoc_ema'}: train with "
                                  "trainer.ema=posthoc trainer.ema_snapshot_every=N")
        return [read_safely(path) for path in paths]

    def periodic_checkpoints(self) -> list[Path]:
        """``epoch_NNNN.pt`` files, oldest first."""
        if not self.checkpoint_dir.is_dir():
            return []
        found = [p for p in self.checkpoint_dir.iterdir() if _PERIODIC.search(p.name)]
        return sorted(found, key=lambda p: int(_PERIODIC.search(p.name).group(1)))  # type: ignore[union-attr]

    def latest_intact(self, map_location: str | torch.device = "cpu") -> Found:
        """The newest checkpoint that loads and verifies: ``last``, then ``last.prev``, then periodic ones.

        Each candidate is read once; the winner's dict comes back with it, so a resume reads it only once.
        """
        candidates = [self.checkpoint_dir / "last.pt", self.checkpoint_dir / "last.prev.pt"]
        candidates += self.periodic_checkpoints()[::-1]
        skipped: list[str] = []
        for path in candidates:
            if not path.is_file():
                continue
            try:
                state = load_checkpoint(path, map_location)
            except CheckpointError as error:
                skipped.append(str(error))
                continue
            return Found(path, state, skipped)
        return Found(None, None, skipped)

    def checkpoint_path(self, which: Literal["best", "last"]) -> Path | None:
        path = self.checkpoint_dir / f"{which}.pt"
        return path if path.is_file() else None

    def best_or_last(self) -> Path:
        """``best.pt``, or ``last.pt`` when no validation has marked a best one yet.

        Raises:
            CheckpointError: the run has no checkpoint.
        """
        path = self.checkpoint_path("best") or self.checkpoint_path("last")
        if path is None:
            raise CheckpointError(f"no checkpoint in {self.checkpoint_dir}: has this run trained?")
        return path

    def load(
        self, which: Literal["best", "last"] | str | Path = "best", map_location: str | torch.device = "cpu"
    ) -> dict[str, Any]:
        """Load ``best``/``last`` of this run, or a checkpoint file by path.

        ``best`` falls back to ``last`` when no validation has marked a best one yet.

        Raises:
            CheckpointError: when there is no such checkpoint, or it is damaged or unsafe.
        """
        if which == "best":
            path = self.best_or_last()
        elif which == "last":
            path = self.checkpoint_path("last")
            if path is None:
                raise CheckpointError(f"no last checkpoint in {self.checkpoint_dir}: has this run trained?")
        else:
            path = Path(which)
        return load_checkpoint(path, map_location)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely (:func:`read_safely`) and check that it is one of this project's.

    Raises:
        CheckpointError: missing file, truncated or corrupted file, one that carries pickled objects, or one of
            another format.
    """
    state = read_safely(path, map_location)
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} is not a training checkpoint of this project")
    checkpoint.check_format(state, path)
    return state


def read_safely(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """A file this project wrote with ``torch.save`` (checkpoint, post-hoc EMA snapshot), verified against its
    sidecar and read with ``weights_only``: only tensors and plain containers, never pickled code.

    Raises:
        CheckpointError: missing file, truncated or corrupted file, or one that carries pickled objects.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    payload = read_verified(path)
    try:
        state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"checkpoint {path} holds objects other than tensors and plain data and was refused "
            f"(weights_only load: {first_line})"
        ) from error
    except Exception as error:  # noqa: BLE001 - the restricted unpickler raises anything on foreign bytes
        raise CheckpointError(f"checkpoint {path} is damaged or not a checkpoint ({type(error).__name__})") from error
    return state


def read_verified(path: Path) -> bytes:
    """The bytes of ``path``, checked against its ``.sha256`` sidecar when it has one.

    Raises:
        CheckpointError: the contents do not match the sidecar (truncated or corrupted file).
    """
    payload = path.read_bytes()
    sidecar = _sidecar(path)
    if sidecar.is_file() and sidecar.read_text().strip() != hashlib.sha256(payload).hexdigest():
        raise CheckpointError(f"checkpoint {path} is damaged (its contents do not match {sidecar.name})")
    return payload


def check_safe_targets(config: Any, source: str | Path) -> None:
    """Refuse a config read from a file (a run's ``config.yaml``, exported metadata) whose ``_target_`` would
    make ``instantiate`` call anything outside this package (``_target_: os.system`` runs code).

    Raises:
        CheckpointError: naming the file and the offending key.
    """

    def visit(node: Any, key: str) -> None:
        if isinstance(node, dict):
            target = node.get("_target_")
            if target is not None and not (isinstance(target, str) and target.startswith(_SAFE_TARGET_PREFIX)):
                raise CheckpointError(
                    f"{source}: {key + '.' if key else ''}_target_={target!r} is outside the "
                    f"'{_SAFE_TARGET_PREFIX}' package and was refused (it could run code)"
                )
            for name, value in node.items():
                visit(value, f"{key}.{name}" if key else str(name))
        elif isinstance(node, list):
            for index, value in enumerate(node):
                visit(value, f"{key}[{index}]")

    visit(config, "")


def _serialize(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def atomic_write(payload: bytes, path: Path, keep_previous: bool = False) -> None:
    """Write ``payload`` and its sha256 sidecar, each via a temporary file, fsync and rename.

    With ``keep_previous`` the file being replaced is first hard-linked to ``<stem>.prev.pt``, so that a damaged
    newest checkpoint still has an intact predecessor and the old file stays in place until the new one replaces
    it. A kill between any two renames leaves every file either with its own sidecar or with none (then it
    loads unverified; it was complete before its rename), never with another file's sidecar, which would make
    an intact file look damaged.

    Raises:
        SaveError: an operation failed (full disk, quota, I/O error); every file written before is intact, no
            temporary file is left, and the line names ``path`` and the error.
    """
    digest = hashlib.sha256(payload).hexdigest().encode()
    temporaries: list[Path] = []
    try:
        temporaries.append(_write_temporary(payload, path))
        temporaries.append(_write_temporary(digest, _sidecar(path)))
        if keep_previous and path.exists():
            _copy_to_previous(path, temporaries)
        _remove(_sidecar(path))
        os.replace(temporaries[0], path)
        os.replace(temporaries[1], _sidecar(path))
        _fsync_dir(path.parent)
    except OSError as error:
        for temporary in temporaries:
            _remove_quietly(temporary)
        raise SaveError.of(path, error) from error


def _copy_to_previous(path: Path, temporaries: list[Path]) -> None:
    """``path`` and its sidecar to ``<stem>.prev<suffix>`` while ``path`` stays: a failure after this leaves the
    old file in place, so no state is lost until the new file has replaced it."""
    previous = path.with_name(path.stem + ".prev" + path.suffix)
    linked = _link_temporary(path, previous)
    temporaries.append(linked)
    old_digest = _sidecar(path).read_bytes() if _sidecar(path).exists() else None
    if old_digest is not None:
        temporaries.append(_write_temporary(old_digest, _sidecar(previous)))
    _remove(_sidecar(previous))
    os.replace(linked, previous)
    if old_digest is not None:
        os.replace(temporaries[-1], _sidecar(previous))


def _link_temporary(source: Path, target: Path) -> Path:
    """A temporary name beside ``target`` for the contents of ``source``: a hard link (no bytes written), or a
    copy where the file system has no hard links."""
    name = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        os.link(source, name)
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        return _write_temporary(source.read_bytes(), target)
    return name


class SaveError(OSError):
    """A file could not be written (full disk, quota, I/O error); one line naming the file and the error.

    Files written before are intact and no temporary file is left behind. An ``OSError``: the trainer reports it
    and exits with status 1 (not a configuration mistake).
    """

    @classmethod
    def of(cls, path: Path, error: OSError) -> SaveError:
        reason = error.strerror or str(error) or type(error).__name__
        code = errno.errorcode.get(error.errno, "") if error.errno is not None else ""
        saved = cls(f"could not write {path}: {reason}{f' ({code})' if code else ''}")
        saved.errno, saved.filename = error.errno, str(path)
        return saved

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else super().__str__()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Replace ``path`` with ``data`` all at once: a temporary file, fsync, rename, fsync of the directory.

    Readers see the old contents or the new ones, never a part; a kill or a full disk keeps the old file.

    Raises:
        SaveError: naming ``path`` and the error; the old file is intact and no temporary file is left.
    """
    path = Path(path)
    temporary: Path | None = None
    try:
        temporary = _write_temporary(data, path)
        os.replace(temporary, path)
        _fsync_dir(path.parent)
    except OSError as error:
        if temporary is not None:
            _remove_quietly(temporary)
        raise SaveError.of(path, error) from error
    return path


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """:func:`atomic_write_bytes` for text."""
    return atomic_write_bytes(path, text.encode(encoding))


def _remove(path: Path) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _remove_stale_temporaries(directory: Path) -> None:
    # Temporary files of a write that was killed; one process writes a run's checkpoints at a time.
    for stale in directory.glob(".*.tmp"):
        _remove(stale)


def _remove_quietly(path: Path) -> None:
    # Cleanup after a failed write: the first error is the one to report.
    try:
        os.remove(path)
    except OSError:
        pass


def _write_temporary(data: bytes, path: Path) -> Path:
    """``data`` in a new hidden file beside ``path``, flushed to disk; removed again if anything fails."""
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(handle, view):]  # os.write may write less than asked
        os.fsync(handle)
    except BaseException:
        os.close(handle)
        _remove_quietly(Path(tmp_name))
        raise
    os.close(handle)
    return Path(tmp_name)


def _fsync_dir(directory: Path) -> None:
    """Make the renames in ``directory`` durable (POSIX: only once the directory entry is flushed).

    Raises:
        OSError: the flush failed with an I/O error, full disk or quota; file systems that cannot fsync a
            directory (EINVAL and the like) are passed over.
    """
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF, errno.EACCES):
            raise
    finally:
        os.close(fd)

"""Whole-file writes that a kill or a full disk cannot leave half done: a temporary file, fsync, rename.

A failed write raises :class:`SaveError` naming the file, with earlier files intact and no temporary file left.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import tempfile
from pathlib import Path

from diffusion.runtime.checks import ConfigError


class SaveError(OSError):
    """A file could not be written (full disk, quota, I/O error); an ``OSError``, so the run exits 1, not 2."""

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
    """Replace ``path`` with ``data`` all at once: temporary file, fsync, rename, fsync of the directory."""
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


def sidecar(path: Path) -> Path:
    """The ``.sha256`` file that holds the digest :func:`atomic_write` wrote for ``path``."""
    return path.with_name(path.name + ".sha256")


def written_intact(path: Path, remedy: str) -> bool:
    """``path`` and its sidecar exist with equal digests (False: not written yet, e.g. killed before its sidecar).

    Raises:
        ConfigError: naming ``path``, with ``remedy``, when its sha256 differs from its sidecar's (a damaged file).
    """
    if not path.is_file() or not sidecar(path).is_file():
        return False
    if hashlib.sha256(path.read_bytes()).hexdigest() != sidecar(path).read_text().strip():
        raise ConfigError(f"{path} is damaged (its sha256 differs from {sidecar(path).name}); {remedy}")
    return True


def atomic_write(payload: bytes, path: Path, keep_previous: bool = False) -> None:
    """Write ``payload`` and its sha256 sidecar, each via a temporary file, fsync and rename.

    With ``keep_previous`` the old file is first hard-linked to ``<stem>.prev<suffix>``. A kill between renames
    leaves a file with its own sidecar or none, never another file's, which would make it look damaged.
    """
    digest = hashlib.sha256(payload).hexdigest().encode()
    temporaries: list[Path] = []
    try:
        temporaries.append(_write_temporary(payload, path))
        temporaries.append(_write_temporary(digest, sidecar(path)))
        if keep_previous and path.exists():
            _copy_to_previous(path, temporaries)
        _remove(sidecar(path))
        os.replace(temporaries[0], path)
        os.replace(temporaries[1], sidecar(path))
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
    old_digest = sidecar(path).read_bytes() if sidecar(path).exists() else None
    if old_digest is not None:
        temporaries.append(_write_temporary(old_digest, sidecar(previous)))
    _remove(sidecar(previous))
    os.replace(linked, previous)
    if old_digest is not None:
        os.replace(temporaries[-1], sidecar(previous))


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


def _remove(path: Path) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def remove_stale_temporaries(directory: Path) -> None:
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
    """Make the renames in ``directory`` durable; file systems that cannot fsync a directory are passed over."""
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

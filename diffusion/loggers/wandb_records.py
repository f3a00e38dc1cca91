"""Read what an offline W&B run holds: its config, history rows and summary, straight from ``run-<id>.wandb``.

Recent W&B versions (0.31 at the time of writing) write no ``config.yaml`` or summary file for an offline run;
everything lives in one transaction log. Its layout:

* a 7-byte file header: ident ``b":W&B"``, magic ``0xBEE1`` (uint16, little-endian), version ``0`` (uint8);
* then a LevelDB-style log: 32 KiB blocks (the file header occupies the first 7 bytes of block 0), each
  chunk has a 7-byte header ``crc (uint32 LE), length (uint16 LE), type (uint8)`` with type FULL=1,
  FIRST=2, MIDDLE=3, LAST=4; a block tail shorter than a chunk header is zero padding;
* the checksum is plain CRC-32 (zlib) over the type byte followed by the payload, not LevelDB's masked
  CRC-32C;
* each reassembled payload is one ``wandb.proto.wandb_internal_pb2.Record``.

A run resumed offline gets a second directory (``offline-run-<time>-<id>-1``) with its own file;
:func:`wandb_files` lists them in order.

``Run.finish()`` returns before W&B's core process has written the file out (it may still hold only the 7-byte
header); :func:`wait_until_finished` waits for the exit record.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FILE_HEADER = struct.Struct("<4sHB")
FILE_IDENT = b":W&B"
FILE_MAGIC = 0xBEE1
FILE_VERSION = 0
BLOCK_SIZE = 32 * 1024
CHUNK_HEADER = struct.Struct("<IHB")
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


class WandbFormatError(ValueError):
    """The file is not a W&B transaction log, or a chunk fails its checksum."""


@dataclass
class WandbRunRecords:
    """What one ``run-<id>.wandb`` file holds.

    ``history`` rows are nested dicts as logged (an image is a dict with ``_type``/``path``); W&B adds
    ``_step``, ``_runtime`` and ``_timestamp``. ``exit_code`` is None when the run never finished (still running
    or killed).
    """

    path: Path
    run_id: str = ""
    project: str = ""
    name: str = ""
    group: str = ""
    tags: list[str] = field(default_factory=list)
    resumed: bool = False
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)
    exit_code: int | None = None


def iter_payloads(data: bytes) -> Iterator[bytes]:
    """The record payloads of a transaction log's bytes (file header included), reassembled across blocks.

    A truncated last chunk (a writer killed mid-write) ends the iteration quietly.

    Raises:
        WandbFormatError: not a W&B log, an unknown version, or a checksum mismatch.
    """
    _check_file_header(data)
    pos, pending = FILE_HEADER.size, b""
    while pos + CHUNK_HEADER.size <= len(data):
        left_in_block = BLOCK_SIZE - pos % BLOCK_SIZE
        if left_in_block < CHUNK_HEADER.size:
            pos += left_in_block  # zero padding at the end of a block
            continue
        checksum, length, kind = CHUNK_HEADER.unpack_from(data, pos)
        if checksum == length == kind == 0:
            pos += left_in_block  # preallocated, never-written space
            continue
        payload = data[pos + CHUNK_HEADER.size : pos + CHUNK_HEADER.size + length]
        if len(payload) < length:
            return
        if zlib.crc32(bytes([kind]) + payload) != checksum:
            raise WandbFormatError(f"checksum mismatch in chunk at byte {pos}")
        if kind not in (FULL, FIRST, MIDDLE, LAST):
            raise WandbFormatError(f"unknown chunk type {kind} at byte {pos}")
        pos += CHUNK_HEADER.size + length
        if kind == FULL:
            yield payload
        elif kind == FIRST:
            pending = payload
        elif kind == MIDDLE:
            pending += payload
        else:
            yield pending + payload
            pending = b""


def _check_file_header(data: bytes) -> None:
    if len(data) < FILE_HEADER.size:
        raise WandbFormatError("file too short for a W&B header")
    ident, magic, version = FILE_HEADER.unpack_from(data, 0)
    if ident != FILE_IDENT or magic != FILE_MAGIC:
        raise WandbFormatError(f"not a W&B transaction log (header {data[:7]!r})")
    if version != FILE_VERSION:
        raise WandbFormatError(f"W&B log version {version} is not supported (expected {FILE_VERSION})")


def iter_records(path: str | Path) -> Iterator[Any]:
    """Each ``wandb_internal_pb2.Record`` of a ``.wandb`` file, in order (needs the ``wandb`` package)."""
    from wandb.proto import wandb_internal_pb2

    for payload in iter_payloads(Path(path).read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        yield record


def read_wandb_file(path: str | Path) -> WandbRunRecords:
    """Config (updates applied in order, W&B's ``_wandb`` entry left out), history rows and final summary."""
    run = WandbRunRecords(path=Path(path))
    for record in iter_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            _read_run(run, record.run)
        elif kind == "config":
            _apply_updates(run.config, record.config)
        elif kind == "history":
            run.history.append(_history_row(record.history))
        elif kind == "summary":
            _apply_updates(run.summary, record.summary)
        elif kind == "artifact":
            run.artifacts.append(record.artifact.name)
        elif kind == "exit":
            run.exit_code = int(record.exit.exit_code)
    run.config.pop("_wandb", None)
    return run


def wait_until_finished(path: str | Path, timeout: float = 30.0, poll: float = 0.05) -> bool:
    """Wait until the log at ``path`` ends with its run's exit record; False if ``timeout`` seconds pass first.

    Only the last few records are decoded, so polling a long run's log stays cheap.
    """
    from wandb.proto import wandb_internal_pb2

    deadline = time.monotonic() + timeout
    while True:
        try:
            tail = deque(iter_payloads(Path(path).read_bytes()), maxlen=8)
        except (OSError, WandbFormatError):
            tail = deque()  # not created yet, or the header not written yet
        for payload in tail:
            record = wandb_internal_pb2.Record()
            record.ParseFromString(payload)
            if record.WhichOneof("record_type") == "exit":
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(poll)


def wandb_files(run_dir: str | Path) -> list[Path]:
    """The ``run-<id>.wandb`` files under ``<run_dir>/wandb/`` (one per session of a resumed run), oldest first."""
    root = Path(run_dir) / "wandb"
    found = [p for p in root.glob("*/run-*.wandb") if p.parent.name != "latest-run"]
    return sorted(found, key=lambda p: p.parent.name)


def _read_run(run: WandbRunRecords, record: Any) -> None:
    run.run_id, run.project = record.run_id, record.project
    run.name, run.group = record.display_name, record.run_group
    run.tags = list(record.tags)
    run.resumed = bool(record.resumed or record.resume)
    _apply_updates(run.config, record.config)


def _apply_updates(target: dict[str, Any], record: Any) -> None:
    """Apply a ConfigRecord/SummaryRecord: ``update`` items set a (nested) key, ``remove`` items delete one."""
    for item in record.update:
        _set_path(target, _item_path(item), json.loads(item.value_json))
    for item in record.remove:
        _remove_path(target, _item_path(item))


def _history_row(record: Any) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for item in record.item:
        _set_path(row, _item_path(item), _history_value(item))
    return row


def _history_value(item: Any) -> Any:
    """Newer writers may use the typed ``value`` oneof instead of ``value_json``."""
    which = item.WhichOneof("value")
    if which is None:
        return json.loads(item.value_json) if item.value_json else None
    if which == "none":
        return None
    if which == "json":
        return json.loads(item.json)
    return getattr(item, which)


def _item_path(item: Any) -> list[str]:
    return [item.key] if item.key else list(item.nested_key)


def _set_path(target: dict[str, Any], path: list[str], value: Any) -> None:
    for part in path[:-1]:
        child = target.get(part)
        if not isinstance(child, dict):
            child = target[part] = {}
        target = child
    target[path[-1]] = value


def _remove_path(target: dict[str, Any], path: list[str]) -> None:
    for part in path[:-1]:
        target = target.get(part)  # type: ignore[assignment]
        if not isinstance(target, dict):
            return
    target.pop(path[-1], None)

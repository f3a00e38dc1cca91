"""Where a training run continues from: the ``resume`` policy, decided once and read once.

``null`` starts a new run (refusing a directory that holds one), ``auto`` continues the newest intact checkpoint
if any, ``<run dir or .pt>`` continues that run; the checkpoint is read once into a :class:`ResumePoint`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NamedTuple

from diffusion.runtime.checks import ConfigError
from diffusion.runtime.distributed import DistributedContext
from diffusion.storage.checkpoint import CheckpointError
from diffusion.storage.file_manager import FileManager, load_checkpoint


class ResumePoint(NamedTuple):
    """The checkpoint to continue from (None for a new run), its loaded dict, and the run directory to write."""

    checkpoint: Path | None
    state: dict[str, Any] | None
    run_dir: Path


def resolve_resume(resume: str | None, output_dir: Path) -> ResumePoint:
    """Apply the ``resume`` policy to ``output_dir`` (the job's directory): ConfigError for ``resume=null`` on a
    directory that holds a run, CheckpointError when ``resume`` names no usable checkpoint.
    """
    has_run = (output_dir / "checkpoints").is_dir() and any((output_dir / "checkpoints").glob("*.pt"))
    if resume is None:
        if has_run:
            raise ConfigError(
                f"{output_dir} already holds a run; pass resume=auto to continue it or choose another hydra.run.dir"
            )
        return ResumePoint(None, None, output_dir)
    if resume == "auto" and not has_run:
        return ResumePoint(None, None, output_dir)
    path, state, skipped = find_run_checkpoint(output_dir if resume == "auto" else resume)
    for line in skipped:
        print(f"warning: {line}; falling back to an older checkpoint", file=sys.stderr)
    if skipped:
        print(f"resuming from {path}", file=sys.stderr)
    return ResumePoint(path, state, run_dir_of(path))


def shared_resume(dist: DistributedContext, resume: str | None, output_dir: Path) -> ResumePoint:
    """Rank 0 resolves; every rank gets the same checkpoint path and run directory (or the same error). Each rank
    then reads the checkpoint itself (once), rather than receiving the whole state over the process group."""
    answer: Any = None
    if dist.is_main:
        try:
            point = resolve_resume(resume, output_dir)
            answer = (point.checkpoint, point.run_dir)
        except ConfigError as error:
            answer = error
    else:
        point = None
    answer = dist.broadcast_object(answer)
    if isinstance(answer, ConfigError):
        raise answer
    if point is not None:
        return point
    path, run_dir = answer
    return ResumePoint(path, None if path is None else load_checkpoint(path), run_dir)


def find_run_checkpoint(resume: str | Path) -> tuple[Path, dict[str, Any], list[str]]:
    """Resolve ``resume=<path>`` (a checkpoint file, or a run directory's newest intact checkpoint): the path, its
    loaded dict, and one line per damaged checkpoint passed over.
    """
    path = Path(resume)
    if path.is_dir():
        found = FileManager(path).latest_intact()
        if found.path is None or found.state is None:
            damaged = f"; damaged: {' | '.join(found.skipped)}" if found.skipped else ""
            raise CheckpointError(f"resume={resume}: no intact checkpoint in {path / 'checkpoints'}{damaged}")
        return found.path, found.state, found.skipped
    if path.is_file():
        try:
            return path, load_checkpoint(path), []
        except CheckpointError as error:
            raise CheckpointError(f"resume={resume}: {error}") from error
    raise CheckpointError(f"resume={resume}: no such run directory or checkpoint file")


def run_dir_of(checkpoint: Path) -> Path:
    """The run directory a checkpoint belongs to (``<run>/checkpoints/x.pt`` -> ``<run>``)."""
    parent = checkpoint.resolve().parent
    return parent.parent if parent.name == "checkpoints" else parent

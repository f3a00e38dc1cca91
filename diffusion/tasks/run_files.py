"""The run directory as a task sees it: the folder Hydra made but the job did not use, rank 0's directory on
every rank, and the listing printed at the end of a run."""

from __future__ import annotations

from pathlib import Path

from diffusion.runtime.distributed import DistributedContext


def remove_if_empty(directory: Path) -> None:
    """Remove ``directory`` if it exists and holds nothing: the folder Hydra made for a job whose run lives
    elsewhere (resumed, rank 0's) or that stopped at a user error."""
    if directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()


def shared_output_dir(dist: DistributedContext, output_dir: Path) -> Path:
    """Rank 0's output directory on every rank (Hydra made one per rank; the others' empty ones are removed)."""
    shared = dist.broadcast_object(output_dir)
    if shared != output_dir:
        remove_if_empty(output_dir)
    return shared


def print_run_files(run_dir: Path) -> None:
    print(f"\nrun directory: {run_dir.resolve()}")
    for path in sorted(run_dir.rglob("*")):
        relative = path.relative_to(run_dir)
        if relative.parts[0] == "wandb":  # W&B's own files: `wandb sync <run dir>/wandb/offline-run-*`
            continue
        if path.is_file() and not path.name.startswith(".") and path.name != "run.lock":  # the lock leaves at exit
            print(f"  {relative}")

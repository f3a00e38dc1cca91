"""The files of a run's checkpoints: ``last`` and ``best``, periodic copies, cleanup, finding the newest intact one.

Layout under ``<run_dir>/checkpoints/``: ``last.pt`` (and ``last.prev.pt``), ``best.pt``, ``epoch_0010.pt`` (the
newest ``keep_last_k``), each with a ``.sha256`` sidecar. Contents: :mod:`diffusion.storage.checkpoint`.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch

from diffusion.runtime.checks import check_int
from diffusion.storage import checkpoint
from diffusion.storage.atomic import SaveError, atomic_write, remove_stale_temporaries, sidecar
from diffusion.storage.checkpoint import CheckpointError
from diffusion.storage.safe_load import load_checkpoint, read_safely  # noqa: F401 - callers load checkpoints here

_PERIODIC = re.compile(r"epoch_(\d+)\.pt$")


class Found(NamedTuple):
    """The newest intact checkpoint of a run (None if there is none), its loaded dict, and one line per damaged
    file passed over."""

    path: Path | None
    state: dict[str, Any] | None
    skipped: list[str]


class FileManager:
    """Saves and finds the checkpoints of one run directory (options: ``checkpoint.*`` in ``conf/config.yaml``)."""

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
        """Write ``last.pt``, plus ``best.pt`` when ``is_best`` and a periodic copy when due (``periodic=None``:
        from the epoch and ``save_every_n_epochs``); returns ``last.pt``. On SaveError the earlier files stay intact.
        """
        missing = [key for key in checkpoint.CHECKPOINT_KEYS if key not in state]
        assert not missing, f"checkpoint state lacks {missing}"
        try:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise SaveError.of(self.checkpoint_dir, error) from error
        remove_stale_temporaries(self.checkpoint_dir)
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
        """Write ``checkpoints/<name>`` atomically (a distillation round's ``round_0008.pt``); resume never reads it."""
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
            sidecar(old).unlink(missing_ok=True)

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
        """Every post-hoc EMA snapshot of the run, oldest first, read safely (CheckpointError when there is none)."""
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
        """The newest checkpoint that loads and verifies (``last``, ``last.prev``, then periodic ones), read once."""
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
        """``best.pt``, or ``last.pt`` when no validation has marked a best one yet."""
        path = self.checkpoint_path("best") or self.checkpoint_path("last")
        if path is None:
            raise CheckpointError(f"no checkpoint in {self.checkpoint_dir}: has this run trained?")
        return path

    def load(
        self, which: Literal["best", "last"] | str | Path = "best", map_location: str | torch.device = "cpu"
    ) -> dict[str, Any]:
        """Load ``best`` (else ``last``) or ``last`` of this run, or a checkpoint file by path."""
        if which == "best":
            path = self.best_or_last()
        elif which == "last":
            path = self.checkpoint_path("last")
            if path is None:
                raise CheckpointError(f"no last checkpoint in {self.checkpoint_dir}: has this run trained?")
        else:
            path = Path(which)
        return load_checkpoint(path, map_location)


def _serialize(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()



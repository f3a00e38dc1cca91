"""The trainer's checkpoints: written by rank 0 with every rank's RNG states, read back for an exact resume.

Each rank draws its own noise, so a checkpoint keeps one RNG state per rank (gathered, a collective) and a resume
puts back each rank's own stream.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from diffusion.loggers.base import BaseLogger
from diffusion.runtime.distributed import DistributedContext
from diffusion.runtime.seeding import rng_state, seed_everything, set_rng_state
from diffusion.storage import checkpoint
from diffusion.storage.checkpoint import TrainState
from diffusion.storage.file_manager import FileManager

# Builds the checkpoint dict of this moment from every rank's RNG states.
CheckpointBuilder = Callable[[list[dict[str, Any]]], dict[str, Any]]


class RunCheckpoints:
    """Saves ``last``/``best`` (and remembers the newest one written) and restores a run from a checkpoint."""

    def __init__(self, file_manager: FileManager, dist: DistributedContext, logger: BaseLogger) -> None:
        self.file_manager, self.dist, self.logger = file_manager, dist, logger
        self.resumed_from: Path | None = None
        self._pending_rng: checkpoint.RankRNG | None = None  # put back by continue_run(), see restore()
        self._saved: tuple[Path, int] | None = None  # the newest checkpoint this process wrote, and its step

    def save(self, build: CheckpointBuilder, step: int, is_best: bool, periodic: bool | None = None) -> None:
        """Write the checkpoint ``build`` makes on rank 0; every rank must call (the RNG states are gathered)."""
        rng = self.dist.all_gather_object(rng_state())
        if self.dist.is_main:
            self._saved = (self.file_manager.save(build(rng), is_best=is_best, periodic=periodic), step)
        self.dist.barrier()

    def kept(self) -> str:
        """Where the last good checkpoint is, for a message about a run that stops."""
        if self._saved is not None:
            return f"the last good checkpoint is {self._saved[0]} (step {self._saved[1]})"
        if self.resumed_from is not None:
            return f"the last good checkpoint is {self.resumed_from}"
        return "no checkpoint was saved yet (set trainer.checkpoint_every_n_steps to save within an epoch)"

    def restore(self, ckpt: dict[str, Any], parts: checkpoint.TrainingParts, source: str | Path) -> TrainState:
        """Put ``ckpt`` (read from ``source``) back into ``parts``; returns its counters and histories. This rank's
        RNG state waits for :meth:`continue_run`. Writes nothing."""
        state = checkpoint.restore(ckpt, parts, source)
        self._pending_rng = checkpoint.rank_rng_state(ckpt, self.dist.rank, self.dist.world_size)
        self.resumed_from = Path(source)
        return state

    def continue_run(self, state: TrainState, seed: int) -> None:
        """Right before the first step: say where the run resumes and put back this rank's RNG state, so nothing run
        between restore and train (evaluator preparation, logger start-up) draws from the restored streams."""
        if self.resumed_from is not None:
            self.logger.log(f"resumed from {self.resumed_from} at epoch {state.epoch}, step {state.global_step}")
        if self._pending_rng is None:
            return
        rng, note = self._pending_rng
        if note is not None:
            self.logger.log(f"warning: {note}")
        if rng is not None:
            set_rng_state(rng)
        else:  # a rank the checkpoint has no stream for: one apart from every other rank's and from step 0's
            seed_everything(hash((seed, self.dist.rank, state.global_step)) % 2**31)
        self._pending_rng = None

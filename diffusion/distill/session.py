"""A distillation as a run like any other: what it adds to the Trainer's run directory and how it resumes.

    checkpoints/round_NNNN.pt   progressive: the student after the round that distilled it to NNNN steps (a
                                full training checkpoint; its EMA weights became the next round's teacher)
    checkpoints/best.pt         the final student (what task=sample and task=evaluate load)
    distill_rounds.json/.txt    progressive: steps vs score, one row per round
    distill_rounds.png          progressive, with an evaluator: each score against the student's steps
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from diffusion.distill.consistency import ConsistencyDistillation
from diffusion.distill.progressive import ProgressiveDistillation
from diffusion.loggers.base import BaseLogger
from diffusion.storage import checkpoint
from diffusion.storage.atomic import atomic_write_text
from diffusion.storage.file_manager import FileManager, load_checkpoint

Distillation = ProgressiveDistillation | ConsistencyDistillation
Score = Callable[[int], dict[str, float]]  # student steps -> metrics of the EMA student sampled with them


class DistillSession:
    """Binds a distillation to the Trainer's step counter and keeps its round checkpoints and table.
    ``score`` scores the EMA student at a step count (None: rounds are not scored).
    """

    def __init__(
        self,
        distillation: Distillation,
        *,
        step_count: Callable[[], int],
        checkpoint_dict: Callable[[], dict[str, Any]],
        file_manager: FileManager,
        logger: BaseLogger,
        score: Score | None = None,
    ) -> None:
        self.distillation = distillation
        self.checkpoint_dict = checkpoint_dict
        self.file_manager = file_manager
        self.logger = logger
        self.score = score
        self.table = file_manager.run_dir / "distill_rounds.json"
        self.rows: list[dict[str, Any]] = json.loads(self.table.read_text()) if self.table.is_file() else []
        self.step_count = step_count

    def start(self, resumed: dict[str, Any] | None) -> None:
        """Put the distillation where a resumed checkpoint left it, then bind it to the step counter. Call after
        the Trainer's ``restore``."""
        if resumed is not None:
            if isinstance(self.distillation, ProgressiveDistillation):
                index, weights = self._resume_round(checkpoint.global_step(resumed))
                self.distillation.start_round(index, weights)
            else:
                self.distillation.restart_target(checkpoint.weights(resumed, use_ema=False))
        round_end = self.round_end if isinstance(self.distillation, ProgressiveDistillation) else None
        self.distillation.bind(self.step_count, round_end)

    def _resume_round(self, global_step: int) -> tuple[int, dict[str, Any] | None]:
        """The round to continue and its teacher: the latest round whose predecessor's checkpoint was saved."""
        distillation = self.distillation
        assert isinstance(distillation, ProgressiveDistillation)
        index = min(global_step // distillation.steps_per_round, len(distillation.student_steps) - 1)
        while index > 0 and not self.round_path(index - 1).is_file():
            index -= 1  # killed between the round's last step and its save: that round ends again on resume
        if index == 0:
            return 0, None
        return index, checkpoint.ema_weights(load_checkpoint(self.round_path(index - 1)))

    def round_path(self, index: int) -> Path:
        steps = self.distillation.student_steps[index]  # type: ignore[union-attr]
        return self.file_manager.checkpoint_dir / f"round_{steps:04d}.pt"

    def round_end(self, index: int) -> dict[str, Any]:
        """Save round ``index``'s student, score it at its step count, add its table row; return its EMA weights
        (the next teacher)."""
        steps = self.distillation.student_steps[index]  # type: ignore[union-attr]
        state = self.checkpoint_dict()
        path = self.file_manager.save_as(state, self.round_path(index).name)
        with torch.autocast("cuda" if torch.cuda.is_available() else "cpu", enabled=False):
            scores = self.score(steps) if self.score is not None else {}
        row = {"round": index + 1, "steps": steps, "global_step": checkpoint.global_step(state), **scores}
        self.rows = [r for r in self.rows if r["round"] != row["round"]] + [row]
        atomic_write_text(self.table, json.dumps(self.rows, indent=2) + "\n")
        atomic_write_text(self.table.with_suffix(".txt"), format_rounds(self.rows))
        if scores:
            from diffusion.storage.images import save_curves

            save_curves({name: [(r["steps"], r[name]) for r in self.rows if name in r] for name in scores},
                        self.table.with_suffix(".png"), xlabel="student sampling steps")
        shown = ", ".join(f"{k} {v:.4g}" for k, v in scores.items())
        self.logger.log(f"distillation round {index + 1}: {steps}-step student saved to {path}" +
                        (f"; {shown}" if shown else ""))
        self.logger.log({f"distill/{k}": v for k, v in {"steps": steps, **scores}.items()}, step=row["global_step"])
        return checkpoint.ema_weights(state)

    def finish(self) -> Path:
        """After the last step: the last round's checkpoint and row, and the final student as ``best.pt`` (the
        Trainer's ``best`` follows the validation loss, whose target changes from round to round)."""
        if isinstance(self.distillation, ProgressiveDistillation):
            self.round_end(len(self.distillation.student_steps) - 1)
        return self.file_manager.save(self.checkpoint_dict(), is_best=True, periodic=False)


def format_rounds(rows: list[dict[str, Any]]) -> str:
    """The steps-vs-score table, one line per round."""
    names = [k for k in rows[0] if k not in ("round", "steps", "global_step")] if rows else []
    lines = ["round  steps  global_step  " + "  ".join(f"{n:>10}" for n in names)]
    for row in rows:
        values = "  ".join(f"{row.get(n, math.nan):>10.4g}" for n in names)
        lines.append(f"{row['round']:>5}  {row['steps']:>5}  {row['global_step']:>11}  {values}")
    return "\n".join(lines) + "\n"

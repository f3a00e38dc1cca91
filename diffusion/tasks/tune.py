"""``task=tune``: a one- or two-step generator from a trained run, at a share of its training steps. ECT (Geng et al.
2024) starts from the run's EMA weights and tunes them into a consistency model; sCD (Lu & Song 2024) trains a
TrigFlow consistency model on the run's ODE. Once started it is a training run like any other (checkpoints,
resume, sampling and scoring of the best EMA checkpoint)."""

from __future__ import annotations

from typing import Any

from diffusion.runtime.distributed import DistributedContext
from diffusion.tasks import train
from diffusion.tasks.components import Components, RunSettings


def tune(parts: Components, run: RunSettings, dist: DistributedContext, start_weights: dict[str, Any] | None) -> float:
    """Train ``parts.model`` from ``start_weights`` (ECT: the teacher's EMA weights; None: its own initialisation);
    a resumed run continues from its checkpoint instead. Returns the best monitored value."""
    if start_weights is not None:
        parts.model.load_state_dict(start_weights)
    return train.train(parts, run, dist)

"""The checkpoint format: one dict that holds a run's whole training state, built, listed and read here only.

Layout (``FORMAT`` 2)::

    format                 "diffusion-checkpoint/2"
    model_state_dict       the raw network weights
    ema_state_dict         the EMA's state (its averaged network under ``shadow``)
    optimizer_state_dict   AdamW
    scheduler_state_dict   the LR schedule
    scaler_state_dict      fp16 gradient scaling (disabled, but present, for fp32/bf16)
    train_state            :class:`TrainState` as a dict: epoch, step, best values, loss histories, metrics
    monitor                the metric that picks ``best`` (``trainer.monitor``)
    config                 the run's resolved config (what ``task=sample`` rebuilds the model from)
    rng_state              Python, NumPy and torch generator states (exact resume); rank 0's in a data-parallel run
    rank_rng_states        (data-parallel runs only, optional) every rank's ``rng_state``, in rank order
    trainable_state_dict   (optional) weights the trained method learns beside the network (REPA's projector)

Format-1 checkpoints (no ``format`` key) load unchanged: everything is read from ``train_state``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

from diffusion.runtime.checks import ConfigError

FORMAT = "diffusion-checkpoint/2"
CHECKPOINT_KEYS = (
    "format",
    "model_state_dict",
    "ema_state_dict",
    "optimizer_state_dict",
    "scheduler_state_dict",
    "scaler_state_dict",
    "train_state",
    "monitor",
    "config",
    "rng_state",
)
# Keys a checkpoint of the first version (no ``format``) must have to be read (it had no scaler state before
# the fp16 path, and no ``monitor``).
_V1_KEYS = ("model_state_dict", "ema_state_dict", "optimizer_state_dict", "scheduler_state_dict", "train_state")


class CheckpointError(ConfigError):
    """A checkpoint file that cannot be used (missing, damaged, unsafe, foreign); the message names the file."""


@dataclass
class TrainState:
    """Everything that changes during training and must survive a resume."""

    epoch: int = 0  # completed epochs
    global_step: int = 0
    best_val_loss: float = math.inf
    best_metric: float = math.inf
    train_losses: list[float] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    epoch_loss_sum: float = 0.0  # of the epoch in progress, so a mid-epoch resume keeps its mean exact
    epoch_samples: int = 0
    skipped_steps: int = 0
    logger_run_id: str | None = None


class TrainingParts(NamedTuple):
    """The objects whose state a checkpoint carries (the Trainer's)."""

    model: Any
    ema: Any
    optimizer: Any
    scheduler: Any
    scaler: Any
    trainable: Any = None  # the trained method's own weights beside the network (REPA's projector), if any


def build(parts: TrainingParts, state: TrainState, monitor: str, config: dict[str, Any],
          rng: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The checkpoint dict of a training run at this moment; ``rng`` holds every rank's RNG states (one for a
    single process)."""
    ckpt = {
        "format": FORMAT,
        "model_state_dict": parts.model.state_dict(),
        "ema_state_dict": parts.ema.state_dict(),
        "optimizer_state_dict": parts.optimizer.state_dict(),
        "scheduler_state_dict": parts.scheduler.state_dict(),
        "scaler_state_dict": parts.scaler.state_dict(),
        "train_state": asdict(state),
        "monitor": monitor,
        "config": config,
        "rng_state": rng[0],
    }
    if len(rng) > 1:
        ckpt["rank_rng_states"] = list(rng)
    if parts.trainable is not None:
        ckpt["trainable_state_dict"] = parts.trainable.state_dict()
    return ckpt


class RankRNG(NamedTuple):
    """The RNG states one rank resumes with (None: none saved for it) and, when not exact, a line saying why."""

    state: dict[str, Any] | None
    note: str | None


def rank_rng_state(ckpt: dict[str, Any], rank: int, world_size: int) -> RankRNG:
    """The RNG states ``rank`` of a ``world_size``-process run resumes with, and a ``note`` when not exact.

    At the same world size the run continues bit for bit; at another, ranks the checkpoint lacks get None (the caller
    seeds them apart).
    """
    saved = ckpt.get("rank_rng_states") or ([ckpt["rng_state"]] if ckpt.get("rng_state") is not None else [])
    state = saved[rank] if rank < len(saved) else None
    if len(saved) == world_size:
        return RankRNG(state, None)
    return RankRNG(state, f"the checkpoint holds the random states of {len(saved)} process(es) and {world_size} "
                          f"resume it: ranks {len(saved)}.. draw fresh noise, so the run continues but is not bit for "
                          "bit the uninterrupted one")


def restore(ckpt: dict[str, Any], parts: TrainingParts, source: str | Path) -> TrainState:
    """Load ``ckpt`` into ``parts`` and return its train state (the RNG states are the caller's to set);
    CheckpointError naming ``source`` when it does not fit these parts.
    """
    check_format(ckpt, source)
    try:
        parts.model.load_state_dict(ckpt["model_state_dict"])
        parts.ema.load_state_dict(ckpt["ema_state_dict"])
        parts.optimizer.load_state_dict(ckpt["optimizer_state_dict"])
        parts.scheduler.load_state_dict(ckpt["scheduler_state_dict"])
        if "scaler_state_dict" in ckpt:
            parts.scaler.load_state_dict(ckpt["scaler_state_dict"])
        restore_trainable(ckpt, parts.trainable)
        return train_state(ckpt)
    except (RuntimeError, ValueError, KeyError, TypeError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"resume: checkpoint {source} does not fit this configuration ({first_line[:200]}); resume "
            "with the options the run was trained with (its overrides.yaml)"
        ) from error


def restore_trainable(ckpt: dict[str, Any], trainable: Any) -> None:
    """Load the method's own weights; a checkpoint with them for a method without (or the reverse) does not fit."""
    saved = ckpt.get("trainable_state_dict")
    if (saved is None) != (trainable is None):
        held = "holds" if saved is not None else "lacks"
        raise ValueError(f"it {held} weights of the method beside the network (repa) that this one "
                         f"{'lacks' if trainable is None else 'needs'}")
    if trainable is not None:
        trainable.load_state_dict(saved)


def check_format(ckpt: dict[str, Any], source: str | Path) -> None:
    """Refuse, in one line naming the file, a checkpoint of an unknown ``format`` or a format-1 one missing a key."""
    version = ckpt.get("format")
    if version is None:
        missing = [key for key in _V1_KEYS if key not in ckpt]
        if missing:
            raise CheckpointError(f"checkpoint {source} lacks {', '.join(missing)}: not a training checkpoint of "
                                  "this project")
        return
    if version != FORMAT:
        raise CheckpointError(f"checkpoint {source} has format {version!r}; this version reads {FORMAT!r} "
                              "(and the first version's): sample or resume it with the release that wrote it")


def train_state(ckpt: dict[str, Any]) -> TrainState:
    """The checkpoint's :class:`TrainState` (keys a newer version added are ignored)."""
    known = {f.name for f in fields(TrainState)}
    return TrainState(**{k: v for k, v in ckpt["train_state"].items() if k in known})


def ema_weights(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The state dict of the EMA network: what sampling, evaluation and export use."""
    return ckpt["ema_state_dict"]["shadow"]


def weights(ckpt: dict[str, Any], use_ema: bool = True) -> dict[str, Any]:
    """The EMA weights, or with ``use_ema=False`` the raw training weights."""
    return ema_weights(ckpt) if use_ema else ckpt["model_state_dict"]


def epoch(ckpt: dict[str, Any]) -> int:
    """Completed epochs when the checkpoint was written."""
    return int(ckpt["train_state"]["epoch"])


def global_step(ckpt: dict[str, Any]) -> int:
    return int(ckpt["train_state"]["global_step"])


def logger_run_id(ckpt: dict[str, Any]) -> str | None:
    """The logger's run id (W&B), so a resumed run continues the same tracked run."""
    return ckpt["train_state"].get("logger_run_id")

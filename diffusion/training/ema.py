"""Exponential moving average of model weights; the sampler uses the averaged copy."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from diffusion.runtime.checks import ConfigError, check_choice, check_float, check_int

Tensors = list[torch.Tensor]


class EMA(nn.Module):
    """Keeps ``shadow = decay_k * shadow + (1 - decay_k) * weights`` after each optimizer step.

    With ``warmup`` the decay is ``min(decay, (1 + k) / (10 + k))`` at update k, so short runs are not dominated by
    the initialisation. Buffers are copied, not averaged.

    Raises:
        ConfigError: if ``decay`` is outside [0, 1).
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        super().__init__()
        self.decay = check_float(decay, "trainer.ema_decay", 0.0, 1.0)
        if self.decay == 1.0:
            raise ConfigError("trainer.ema_decay must be < 1 (1 would never move the averaged weights), got 1.0")
        self.warmup = warmup
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)
        self.num_updates = 0
        self._listed: tuple[nn.Module, Tensors, Tensors, bool] | None = None

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int | None = None) -> None:
        """Fold in the weights after an optimizer step (``step`` is accepted for the post-hoc EMA's interface; this
        EMA counts its own updates for the warmup)."""
        shadow_params, model_params, has_buffers = self._lists(model)
        torch._foreach_lerp_(shadow_params, model_params, 1.0 - self.current_decay())
        for shadow_buffer, buffer in zip(self.shadow.buffers(), model.buffers()) if has_buffers else ():
            shadow_buffer.copy_(buffer)  # walked each time: a module may assign a new buffer tensor in forward
        self.num_updates += 1

    def _lists(self, model: nn.Module) -> tuple[Tensors, Tensors, bool]:
        """The shadow's and ``model``'s parameters (and whether there are buffers), listed once per model: walking
        the module tree every step costs a small network's step several per cent. The lists hold the modules' own
        Parameter objects, which ``load_state_dict`` and ``.to()`` update in place, so they stay valid."""
        if self._listed is None or self._listed[0] is not model:
            has_buffers = next(model.buffers(), None) is not None
            self._listed = (model, list(self.shadow.parameters()), list(model.parameters()), has_buffers)
        return self._listed[1:]

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        return {"shadow": self.shadow.state_dict(), "num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> Any:  # type: ignore[override]
        self.num_updates = int(state["num_updates"])
        return self.shadow.load_state_dict(state["shadow"], strict=strict)


def make_ema(model: nn.Module, kind: str, decay: float, stds: Sequence[float],
             snapshot_every: int | None) -> tuple[nn.Module, int | None]:
    """The trainer's weight average (:class:`EMA` or :class:`~diffusion.training.posthoc_ema.PosthocEMA`) and the
    steps between post-hoc snapshots (None for ``ema``).

    Raises:
        ConfigError: naming ``trainer.ema``, ``trainer.ema_decay``, ``trainer.ema_stds`` or
            ``trainer.ema_snapshot_every``.
    """
    from diffusion.training.posthoc_ema import PosthocEMA

    check_choice(kind, "trainer.ema", ("ema", "posthoc"))
    every = None if snapshot_every is None else check_int(snapshot_every, "trainer.ema_snapshot_every", 1)
    if kind == "ema":
        return EMA(model, decay), None
    if every is None:
        raise ConfigError("trainer.ema=posthoc needs trainer.ema_snapshot_every=N (steps between the snapshots "
                          "task=posthoc_ema reconstructs from)")
    return PosthocEMA(model, stds), every

"""Learning-rate schedules as pure step -> factor functions, for ``torch.optim.lr_scheduler.LambdaLR``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from diffusion.runtime.checks import check_choice, check_float, check_int

LRSchedule = Literal["constant", "cosine"]


@dataclass(frozen=True)
class WarmupThenDecay:
    """Linear warmup from 0 to 1 over ``warmup_steps``, then ``constant`` 1 or a ``cosine`` decay to
    ``min_lr_ratio`` at ``total_steps`` (Loshchilov & Hutter 2017, without restarts).

    Raises:
        ConfigError: naming the ``trainer.*`` key of an out-of-range value.
    """

    warmup_steps: int
    total_steps: int
    schedule: LRSchedule = "constant"
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        check_int(self.warmup_steps, "trainer.warmup_steps", minimum=0)
        check_choice(self.schedule, "trainer.lr_schedule", ("constant", "cosine"))
        check_float(self.min_lr_ratio, "trainer.min_lr_ratio", 0.0, 1.0)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

"""Shortcut models (Frans et al. 2024, "One Step Diffusion via Shortcut Models"): one network conditioned on the
step size d samples in 1, 2, 4, ..., M steps.

Notation (paper -> code; the paper's time already runs from noise at 0 to data at 1, as this project's flows):

    x_t        = t y + (1 - t) n, the linear path of :class:`~diffusion.methods.FlowMatching` (paper eq. 1)
    s(x_t, t, d)  the shortcut: the step x_{t+d} = x_t + d s(x_t, t, d) (paper eq. 3); at d = 0 the velocity
    flow loss  || s(x_t, t, 0) - (y - n) ||^2 on the rest of the batch (paper eq. 5, first term)
    self-consistency  s(x_t, t, 2d) = sg(s_t + s_{t+d}) / 2 with s_t = s(x_t, t, d), x_{t+d} = x_t + d s_t,
               s_{t+d} = s(x_{t+d}, t + d, d) (paper eq. 4-5), on ``consistency_share`` of each batch; the full
               step 2d = 2^-j, j uniform in {0, ..., log2 M}, t uniform on the multiples of 2d below 1 (paper
               Sec. 3.1); at the smallest full step 1/M the half steps are the flow's d = 0 (the paper's code)

The network embeds T t and, as its second time, T d (``IntervalEmbedding``, as MeanFlow's interval).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from diffusion.methods.base import broadcast, kwargs_rows
from diffusion.methods.flow_matching import TimeSampling
from diffusion.methods.meanflow import TwoTimeFlow, bare_network
from diffusion.runtime.checks import ConfigError, check_float, check_int


class Shortcut(TwoTimeFlow):
    """A shortcut model on the linear path (``method=shortcut``), sampled by the ``shortcut`` solver in a power of
    two of steps up to ``max_steps``. Settings: see conf/method/shortcut.yaml.

    Raises:
        ConfigError: naming the ``method.*`` key of an invalid argument.
    """

    name = "shortcut"
    solvers: ClassVar[tuple[str, ...]] = ("shortcut",)

    def __init__(self, max_steps: int = 128, consistency_share: float = 0.25,
                 time_sampling: TimeSampling = "uniform", m: float = 0.0, s: float = 1.0,
                 num_timesteps: int = 1000, cond_drop_prob: float = 0.1, clip_denoised: bool = True,
                 default_solver: str = "shortcut") -> None:
        super().__init__("linear", "velocity", time_sampling, m, s, num_timesteps=num_timesteps,
                         clip_denoised=clip_denoised, cond_drop_prob=cond_drop_prob, default_solver=default_solver)
        self.max_steps = check_int(max_steps, "method.max_steps", minimum=1)
        if self.max_steps & (self.max_steps - 1):
            raise ConfigError(f"method.max_steps must be a power of two (1, 2, 4, ..., 128), got {max_steps}")
        self.consistency_share = check_float(consistency_share, "method.consistency_share", 0.0, 1.0)

    def sampling_times(self, steps: int) -> list[float]:
        """``steps + 1`` uniform times from 0 to 1: a step size 1 / steps the network was trained for.

        Raises:
            ConfigError: naming ``sampler.steps`` unless it is a power of two up to ``max_steps``.
        """
        check_int(steps, "sampler.steps", minimum=1)
        if steps > self.max_steps or steps & (steps - 1):
            raise ConfigError(f"sampler.steps={steps}: a shortcut model samples in a power of two of steps up to "
                              f"method.max_steps={self.max_steps} (1, 2, 4, ...)")
        return torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64).tolist()

    def consistency_times(self, count: int, t: torch.Tensor | None, device: torch.device
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """(times, full steps 2d) ``(count,)`` float64: 2d = 2^-j, j uniform in {0, ..., log2 M}, and t uniform on
        the multiples of 2d in [0, 1). Validation's integer ``t`` fixes j = t mod (log2 M + 1) and the time at its
        (t + 0.5) / T quantile rounded down to the grid."""
        levels = int(math.log2(self.max_steps)) + 1
        if t is None:
            exponent = torch.randint(0, levels, (count,), device=device)
            fraction = torch.rand(count, device=device, dtype=torch.float64)
        else:
            exponent = t.to(device) % levels
            fraction = (t.to(device=device, dtype=torch.float64) + 0.5) / self.num_timesteps
        full = torch.pow(2.0, -exponent.to(torch.float64))  # (count,)
        return torch.floor(fraction / full) * full, full

    def compute_loss(self, model: nn.Module, x0: torch.Tensor, *, t: torch.Tensor | None = None,
                     noise: torch.Tensor | None = None, **model_kwargs: Any) -> torch.Tensor:
        """The flow loss on the batch's last rows and the self-consistency loss on its first ``consistency_share``
        (paper Alg. 1), one mean squared error over the whole batch."""
        batch = x0.shape[0]
        count = round(self.consistency_share * batch)
        noise = torch.randn_like(x0) if noise is None else noise
        kwargs = self.condition_kwargs(model, model_kwargs)  # labels dropped with cond_drop_prob
        flow_times = self.training_times(None if t is None else t[count:], batch - count, x0.device)
        jump_times, full = self.consistency_times(count, None if t is None else t[:count], x0.device)
        times = torch.cat([jump_times, flow_times])  # (B,) float64
        steps = torch.cat([full, torch.zeros_like(flow_times)])  # 2d, 0 for the flow rows
        x_t = self.q_sample(x0, times, noise)
        with torch.no_grad():
            jump = self.two_half_steps(model, x_t[:count], jump_times, full, kwargs_rows(kwargs, slice(0, count)))
        target = torch.cat([jump, (x0 - noise)[count:]])
        output = model(x_t, self.network_time(times), interval=self.network_time(steps), **kwargs)
        return (output.float() - target.float()).pow(2).mean()

    def two_half_steps(self, model: nn.Module, x_t: torch.Tensor, times: torch.Tensor, full: torch.Tensor,
                       kwargs: dict[str, Any]) -> torch.Tensor:
        """(s_t + s_{t+d}) / 2 ``(count, ...)``: two steps of d = full / 2, on the network inside any DDP wrapper
        (a target: no gradient); the flow's d = 0 where the full step is the finest, 1 / M."""
        network = bare_network(model)
        half = torch.where(full * self.max_steps <= 1, torch.zeros_like(full), full / 2)
        interval = self.network_time(half)
        first = network(x_t, self.network_time(times), interval=interval, **kwargs)
        x_mid = x_t + broadcast(full / 2, x_t) * first
        second = network(x_mid, self.network_time(times + full / 2), interval=interval, **kwargs)
        return (first + second) / 2

    def extra_repr(self) -> str:
        return (f"max_steps={self.max_steps}, consistency_share={self.consistency_share}, "
                f"time_sampling={self.time_sampling!r}, default_solver={self.default_solver!r}")


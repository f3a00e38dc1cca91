"""MeanFlow (Geng et al. 2025, "Mean Flows for One-step Generative Modeling"): the network models the average
velocity over a time interval, so one evaluation crosses the whole path from noise to data.

Notation (paper -> code): the paper's time runs data (0) -> noise (1), ours noise -> data, so its (r, t), r <= t,
are ``end`` = 1 - r and ``start`` = 1 - t, and its velocities change sign:

    x_t       = t y + (1 - t) n, the linear path of :class:`~diffusion.methods.FlowMatching` (paper eq. 1 reversed)
    v         = y - n, the conditional velocity dx_t / dt (paper v_t = eps - x, eq. 2, negated)
    u(x, a, b) = 1 / (b - a) int_a^b v(x_s, s) ds, the average velocity from x = x_a at ``start`` a to ``end`` b
              (paper eq. 3), so x_b = x_a + (b - a) u(x_a, a, b) (paper eq. 5: z_r = z_t - (t - r) u(z_t, r, t))
    identity  u(x_a, a, b) = v(x_a, a) + (b - a) d/da u(x_a, a, b) (paper eq. 6), with the total derivative
              d/da u = v . grad_x u + partial_a u (paper eq. 8): a Jacobian-vector product with tangent (v, 1, 0)
    loss      || u_theta - sg(u_tgt) ||^2, u_tgt = v + (b - a) du/da (paper eq. 9-10), weighted by the adaptive
              w = sg(1 / (||Delta||^2 + c)^p) (paper Sec. 4.3, "Adaptive loss weighting")
    CFG       v is replaced by v~ = omega v + (1 - omega) u_theta(x_a, a, a | null) on labelled samples (paper
              eq. 13-16): the guided field is trained into the network, and sampling takes one evaluation

The network embeds T a and, as its second time, the interval T (b - a) (Table 1c); interval 0 is the
instantaneous velocity, so :meth:`velocity` and D(x; sigma) are flow matching's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from torch import nn
from torch.func import jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

from diffusion.methods.base import GridKind, Network, broadcast, kwargs_rows
from diffusion.methods.flow_matching import FlowMatching, TimeSampling
from diffusion.models.embeddings import IntervalEmbedding
from diffusion.runtime.checks import ConfigError, check_float


class TwoTimeFlow(FlowMatching):
    """A flow whose network also embeds an interval length h (``model.two_times=true``): its output is the average
    velocity over [t, t + h] (instantaneous at h = 0), sampled by x_{t + h} = x_t + h u(x_t, t, t + h).
    """

    grids: ClassVar[tuple[GridKind, ...]] = ("time",)
    two_times: ClassVar[bool] = True  # the build sets model.two_times=true

    def check_network(self, network: nn.Module) -> None:
        if not any(isinstance(module, IntervalEmbedding) for module in network.modules()):
            raise ConfigError(f"method={self.name} needs a network that embeds a second time: set "
                              "model.two_times=true (every backbone of the package takes it)")

    def average_velocity(self, network: Network, x: torch.Tensor, start: float, end: float) -> torch.Tensor:
        """u(x, start, end) ``(B, ...)``: the step x_end = x + (end - start) u of the method's solver."""
        times = torch.full((x.shape[0],), start, dtype=torch.float64, device=x.device)
        interval = torch.full_like(times, end - start)
        return network(x, self.network_time(times), interval=self.network_time(interval))


class MeanFlow(TwoTimeFlow):
    """MeanFlow on the linear path (``method=meanflow``), sampled in 1 or k steps by the ``meanflow`` solver.
    Settings: see conf/method/meanflow.yaml.

    Raises:
        ConfigError: naming the ``method.*`` key of an invalid argument.
    """

    name = "meanflow"
    solvers: ClassVar[tuple[str, ...]] = ("meanflow",)

    def __init__(self, time_sampling: TimeSampling = "logit_normal", m: float = -0.4, s: float = 1.0,
                 r_equals_t_share: float = 0.75, norm_p: float = 1.0, norm_eps: float = 1e-3,
                 guidance_scale: float = 1.0, num_timesteps: int = 1000, cond_drop_prob: float = 0.1,
                 clip_denoised: bool = True, shift: float = 1.0, default_solver: str = "meanflow") -> None:
        super().__init__("linear", "velocity", time_sampling, m, s, shift=shift, num_timesteps=num_timesteps,
                         clip_denoised=clip_denoised, cond_drop_prob=cond_drop_prob, default_solver=default_solver)
        self.r_equals_t_share = check_float(r_equals_t_share, "method.r_equals_t_share", 0.0, 1.0)
        self.norm_p = check_float(norm_p, "method.norm_p", minimum=0.0)
        self.norm_eps = check_float(norm_eps, "method.norm_eps", minimum=0.0, inclusive=False)
        self.guidance_scale = check_float(guidance_scale, "method.guidance_scale")
        if self.guidance_scale != 1.0 and self.cond_drop_prob == 0.0:
            raise ConfigError(f"method.guidance_scale={guidance_scale} mixes in the unconditional field, which "
                              "method.cond_drop_prob=0 never trains: set method.cond_drop_prob > 0 (0.1)")

    # ----------------------------------------------------------------------------------------------------
    # Training
    # ----------------------------------------------------------------------------------------------------
    def interval_times(self, t: torch.Tensor | None, batch: int, device: torch.device
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """(start, end) ``(B,)`` float64, start <= end: two draws of :meth:`training_times` ordered, end = start on
        a ``r_equals_t_share`` of the batch (paper Sec. 4.3). For validation's integer ``t``, the quantiles of t and
        of T - 1 - t, ordered: a fixed sweep over intervals of every length."""
        if t is not None:
            first = self.training_times(t, batch, device)
            second = self.training_times(self.num_timesteps - 1 - t.to(device), batch, device)
            return torch.minimum(first, second), torch.maximum(first, second)
        first, second = self.training_times(None, batch, device), self.training_times(None, batch, device)
        start, end = torch.minimum(first, second), torch.maximum(first, second)
        equal = torch.rand(batch, device=device) < self.r_equals_t_share
        return start, torch.where(equal, start, end)

    def compute_loss(self, model: nn.Module, x0: torch.Tensor, *, t: torch.Tensor | None = None,
                     noise: torch.Tensor | None = None, **model_kwargs: Any) -> torch.Tensor:
        """The MeanFlow loss (paper Alg. 1) with the adaptive weighting, averaged over the batch."""
        start, end = self.interval_times(t, x0.shape[0], x0.device)
        noise = torch.randn_like(x0) if noise is None else noise
        x_t = self.q_sample(x0, start, noise)
        kwargs = self.condition_kwargs(model, model_kwargs)  # labels dropped with cond_drop_prob
        velocity = self.guided_velocity(model, x_t, start, x0 - noise, kwargs, model_kwargs)
        u = model(x_t, self.network_time(start), interval=self.network_time(end - start), **kwargs)
        du_dt = self.total_derivative(model, x_t, start, end, velocity, kwargs)
        target = (velocity + broadcast(end - start, x0) * du_dt).detach()  # u_tgt, stop-gradient
        squared = (u.float() - target.float()).flatten(1).pow(2).sum(dim=1)  # ||Delta||^2 (B,)
        weight = (squared.detach() + self.norm_eps).pow(-self.norm_p)
        return (weight * squared).mean()

    def total_derivative(self, model: nn.Module, x_t: torch.Tensor, start: torch.Tensor, end: torch.Tensor,
                         velocity: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        """d/da u(x_a, a, b) ``(B, ...)`` float32 at a = ``start``: one forward-mode JVP with tangent (dx/da, da/da) =
        (v, 1), the interval b - a shrinking as a grows (paper eq. 8 with dr/dt = 0). Computed by :func:`target_jvp`
        on the rows with b > a only: the target multiplies it by b - a, so the r = t rows (the paper's 75%) need
        none and are left at zero, which spares most of the JVP's cost.
        """
        network = bare_network(model)
        scale = float(self.num_timesteps)
        derivative = torch.zeros_like(velocity, dtype=torch.float32)
        moving = end > start
        if not bool(moving.any()):
            return derivative
        end32, rows = end[moving].float(), kwargs_rows(kwargs, moving)

        def u(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
            return network(x, a * scale, interval=(end32 - a) * scale, **rows)

        derivative[moving] = target_jvp(network, u, (x_t[moving], start[moving]),
                                        (velocity[moving], torch.ones_like(end32)))
        return derivative

    def guided_velocity(self, model: nn.Module, x_t: torch.Tensor, start: torch.Tensor, velocity: torch.Tensor,
                        kwargs: dict[str, Any], model_kwargs: dict[str, Any]) -> torch.Tensor:
        """v~ = omega v + (1 - omega) u(x_t, t, t | null) on the samples that keep their label (paper eq. 16); v on
        the unconditional ones and without guidance. The unconditional field is a constant of the target."""
        y = kwargs.get("y")
        if self.guidance_scale == 1.0 or y is None:
            return velocity
        network = bare_network(model)
        null_label = int(model_kwargs.get("null_label", getattr(network, "num_classes", 0)))
        with torch.no_grad():
            unconditional = network(x_t, self.network_time(start), y=torch.full_like(y, null_label)).to(velocity.dtype)
        guided = self.guidance_scale * velocity + (1 - self.guidance_scale) * unconditional
        labelled = broadcast((y != null_label).to(velocity.dtype), velocity)
        return labelled * guided + (1 - labelled) * velocity

    def extra_repr(self) -> str:
        return (f"r_equals_t_share={self.r_equals_t_share}, norm_p={self.norm_p}, m={self.m}, s={self.s}, "
                f"guidance_scale={self.guidance_scale}, default_solver={self.default_solver!r}")


@contextmanager
def eval_mode(network: nn.Module) -> Iterator[nn.Module]:
    """``network`` in eval mode for the block, its training flags restored after."""
    flags = [(module, module.training) for module in network.modules()]
    network.eval()
    try:
        yield network
    finally:
        for module, flag in flags:
            module.training = flag


def target_jvp(network: nn.Module, function: Callable[..., torch.Tensor], primals: tuple[torch.Tensor, ...],
               tangents: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The forward-mode derivative of ``function`` (which runs ``network``) at ``primals`` along ``tangents``
    (``torch.func.jvp``: one extra forward's cost), for a stop-gradient target: without gradients, in eval mode (no
    dropout redraw; EDM2's in-place weight normalisation already done), with the math attention kernel (fused ones
    have no forward-mode derivative) and in float32 outside any autocast (forward-mode AD through autocast's weight
    casts fails on the CPU, and a derivative in bfloat16 would lose the digits the target needs)."""
    device_type = primals[0].device.type
    primals = tuple(p.float() for p in primals)
    tangents = tuple(t.float() for t in tangents)
    with (torch.no_grad(), eval_mode(network), sdpa_kernel([SDPBackend.MATH]),
          torch.autocast(device_type, enabled=False)):
        return jvp(function, primals, tangents)[1]


def bare_network(model: nn.Module) -> nn.Module:
    """The network inside the Trainer's wrappers, ``torch.compile(DistributedDataParallel(network))``: what a target
    computed without gradients (a JVP, the unconditional field, a shortcut's half steps) runs on."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)

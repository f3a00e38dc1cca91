"""Continuous-time consistency models on TrigFlow (Lu & Song 2024, "Simplifying, Stabilizing and Scaling
Continuous-Time Consistency Models", sCM): trained from scratch (sCT) or from a teacher's ODE (sCD), sampled in
one step or two.

Notation (paper -> code; t runs from the data at 0 to the noise at pi / 2):

    x_t        = cos(t) x_0 + sin(t) z, z ~ N(0, sigma_d^2 I) (paper eq. 6); z = sigma_d n, n unit noise
    sigma      = sigma_d tan(t): x_t / cos(t) = x_0 + sigma n is the sigma-space sample of the solvers
    F          the network, F(x_t / sigma_d, c_noise(t)); c_noise(t) = t (paper Sec. 4.1, "identity time
               transformation": dc_noise / dt stays bounded, so the JVP's time derivative does too). A larger
               ``time_scale`` (such as 2T / pi, t = pi / 2 at the sinusoid's usual range T) trains far worse: on two
               moons the samples stay a blob where c_noise = t draws both moons
    f(x_t, t)  = cos(t) x_t - sin(t) sigma_d F (paper eq. 9): f(x, 0) = x, the boundary condition
    dx_t / dt  sCT: cos(t) z - sin(t) x_0; sCD: the teacher's PF-ODE, from its denoiser D(x; sigma) at
               x = x_t / cos(t), sigma = sigma_d tan(t): dx_t / dt = (cos(t) x_t - D) / sin(t)
               (x_t = cos(t) D + sin(t) z_hat and dx_t / dt = -sin(t) D + cos(t) z_hat, z_hat eliminated)
    g          = -cos^2(t) (sigma_d F^- - dx_t / dt) - r cos(t) sin(t) (x_t + sigma_d dF^- / dt) (paper eq. 8
               with the tangent warm-up r: 0 -> 1 over ``tangent_warmup_steps``, Sec. 4.2); F^- = sg(F)
    dF^-/dt    = grad_x F . dx_t / dt + partial_t F: one forward-mode JVP with tangent cos(t) sin(t) (dx_t / dt,
               1), which returns cos(t) sin(t) dF^- / dt directly (the paper's stable ordering, Appendix)
    loss       e^{-u(t)} / D ||F - F^- - g / (||g|| + c)||^2 + u(t) (tangent normalisation, c = 0.1, and the
               adaptive weighting of Sec. 4.2 with u = -w_phi, a learned function of t)
    t sampling tan(t) = e^tau / sigma_d, tau ~ N(P_mean, P_std^2) (paper Sec. 4.2, "proposal distribution")
    sampling   1 step: x_0 = f(sigma_d n, pi / 2); 2 steps: then x_mid = cos(t_mid) x_0 + sin(t_mid) sigma_d n',
               x_0 = f(x_mid, t_mid), t_mid = 1.1 (paper Appendix) -- the ``consistency`` solver on the two-level
               grid sigma in {inf, sigma_d tan(t_mid)}

u(t) is :class:`AdaptiveWeight`, which :meth:`SCM.check_network` adds to the network as ``trigflow_weight``, so
that the optimizer, the EMA, checkpoints and data-parallel training all hold its parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from diffusion.methods.base import BaseMethod, GridKind, Network, broadcast
from diffusion.methods.edm import EDM
from diffusion.methods.flow_matching import FlowMatching
from diffusion.methods.meanflow import bare_network, target_jvp
from diffusion.models.embeddings import timestep_embedding
from diffusion.runtime.checks import check_bool, check_float, check_int

HALF_PI = math.pi / 2
WEIGHT_NAME = "trigflow_weight"  # the attribute of the network holding u(t)


class AdaptiveWeight(nn.Module):
    """u(t) ``(B,)``: a linear map of the sinusoidal embedding of c_noise(t), the log-variance that balances the
    loss over t (the paper's w_phi(t) = -u, as EDM2's uncertainty weighting). Zero at initialisation."""

    def __init__(self, features: int = 128) -> None:
        super().__init__()
        self.features = features
        self.linear = nn.Linear(features, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        return self.linear(timestep_embedding(c_noise, self.features)).squeeze(-1)


class TrigFlowTeacher(nn.Module):
    """A teacher run of this project (EDM, or a flow) seen as TrigFlow's PF-ODE dx_t / dt (module docstring).
    The network is frozen; ``denoise`` is its method's D(x; sigma) at per-sample sigma."""

    def __init__(self, network: nn.Module, method: BaseMethod, sigma_data: float) -> None:
        super().__init__()
        self.network = network.eval().requires_grad_(False)
        self.method = method
        self.sigma_data = sigma_data

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        """D(x; sigma) ``(B, ...)``: EDM's preconditioned network (eq. 7), or a flow's prediction turned into y at
        its time t(sigma) = the inverse of its SNR alpha_t / sigma_t, with x_t = alpha_t x."""

        def network(x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.network(x_in, t, **kwargs)

        if isinstance(self.method, EDM):
            return self.method.precondition(network, x, sigma)
        flow = self.method
        assert isinstance(flow, FlowMatching), "the tune task admits EDM and flow teachers only"
        times = flow.scheduler.snr_inverse(1 / sigma).clamp(0.0, 1.0)  # (B,) float64
        alpha = flow.path_coefficients(times)[0]
        x_t = broadcast(alpha, x) * x
        return flow.convert(network(x_t, flow.network_time(times)), flow.prediction, "x0", x_t, times)

    @torch.no_grad()
    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        """dx_t / dt = (cos(t) x_t - D(x_t / cos(t); sigma_d tan(t))) / sin(t) ``(B, ...)``, in float64 (t in
        (0, pi / 2) as the training draws give)."""
        cos, sin = broadcast(t.cos(), x_t.double()), broadcast(t.sin(), x_t.double())
        x = x_t.double() / cos
        denoised = self.denoise(x.to(x_t.dtype), self.sigma_data * t.tan(), kwargs).double()
        return ((cos * x_t.double() - denoised) / sin).to(x_t.dtype)


class SCM(BaseMethod):
    """A continuous-time consistency model on TrigFlow (``method=scm``), sampled by the ``consistency`` solver in 1
    or 2 steps. With ``teacher`` (passed by ``task=tune method=scm``) it is sCD, else sCT.
    Settings: see conf/method/scm.yaml.

    Raises:
        ConfigError: naming the ``method.*`` key of an invalid argument.
    """

    name = "scm"
    solvers: ClassVar[tuple[str, ...]] = ("consistency",)
    grids: ClassVar[tuple[GridKind, ...]] = ("schedule",)
    timestep_spacing: ClassVar[str | None] = "trailing"  # 1 step: the top level (pi / 2); 2 steps: both
    prediction = "trigflow"  # F of the module docstring

    def __init__(self, sigma_data: float = 0.5, p_mean: float = -1.0, p_std: float = 1.4, t_mid: float = 1.1,
                 tangent_norm_c: float = 0.1, tangent_warmup_steps: int = 100, adaptive_weighting: bool = True,
                 time_scale: float = 1.0, num_timesteps: int = 1000, clip_denoised: bool = True,
                 cond_drop_prob: float = 0.0, default_solver: str = "consistency",
                 teacher: TrigFlowTeacher | None = None) -> None:
        super().__init__()
        self.sigma_data = check_float(sigma_data, "method.sigma_data", minimum=0.0, inclusive=False)
        self.p_mean = check_float(p_mean, "method.p_mean")
        self.p_std = check_float(p_std, "method.p_std", minimum=0.0)
        self.t_mid = check_float(t_mid, "method.t_mid", 0.0, HALF_PI, inclusive=False)
        self.tangent_norm_c = check_float(tangent_norm_c, "method.tangent_norm_c", minimum=0.0, inclusive=False)
        self.tangent_warmup_steps = check_int(tangent_warmup_steps, "method.tangent_warmup_steps", minimum=0)
        self.adaptive_weighting = check_bool(adaptive_weighting, "method.adaptive_weighting")
        self.num_timesteps = check_int(num_timesteps, "method.num_timesteps", minimum=1)
        self.time_scale = check_float(time_scale, "method.time_scale", minimum=0.0, inclusive=False)
        self.clip_denoised = bool(clip_denoised)
        self.cond_drop_prob = check_float(cond_drop_prob, "method.cond_drop_prob", 0.0, 1.0)
        self.default_solver = self.check_solver(default_solver)
        self.sigma_min = self.sigma_data * math.tan(self.t_mid)
        self.sigma_max = math.inf
        self.teacher = teacher
        self._step_count: Callable[[], int] = lambda: 0

    def follow_steps(self, step_count: Callable[[], int]) -> None:
        """Read the optimizer step from ``step_count`` (the tangent warm-up follows it; a resumed run's counter is
        restored, so r is too)."""
        self._step_count = step_count

    def check_network(self, network: nn.Module) -> None:
        """Give the network its adaptive weight u(t) (``trigflow_weight``) if it lacks one: built with the run,
        its parameters are trained, averaged and saved with the network's."""
        if self.adaptive_weighting and not isinstance(getattr(network, WEIGHT_NAME, None), AdaptiveWeight):
            network.add_module(WEIGHT_NAME, AdaptiveWeight())

    # ----------------------------------------------------------------------------------------------------
    # TrigFlow
    # ----------------------------------------------------------------------------------------------------
    def network_time(self, t: torch.Tensor) -> torch.Tensor:
        """c_noise(t) = ``time_scale`` t ``(B,)`` float32."""
        return t.float() * self.time_scale

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = cos(t) x_0 + sin(t) sigma_d n at per-sample times ``t`` ``(B,)`` in [0, pi / 2]."""
        t = t.to(device=x0.device, dtype=torch.float64)
        return broadcast(t.cos(), x0) * x0 + broadcast(t.sin() * self.sigma_data, x0) * noise

    def consistency_function(self, network: Network, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """f(x_t, t) = cos(t) x_t - sin(t) sigma_d F(x_t / sigma_d, c_noise(t)) ``(B, ...)``, unclipped."""
        output = network(x_t / self.sigma_data, self.network_time(t)).to(x_t.dtype)
        return broadcast(t.cos(), x_t) * x_t - broadcast(t.sin() * self.sigma_data, x_t) * output

    def schedule_sigmas(self) -> torch.Tensor:
        """The two levels of the sampling grid, ascending: sigma_d tan(t_mid) and inf (t = pi / 2)."""
        return torch.tensor([self.sigma_min, math.inf], dtype=torch.float64)

    def default_steps(self, solver: str) -> int | None:
        return 1

    def denoise(self, network: Network, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """f at t = arctan(sigma / sigma_d) for the sigma-space ``x`` (at sigma = inf x holds n: x_t = sigma_d n)."""
        t = HALF_PI if math.isinf(sigma) else math.atan(sigma / self.sigma_data)
        x_t = x * (self.sigma_data if math.isinf(sigma) else math.cos(t))
        times = torch.full((x.shape[0],), t, dtype=torch.float64, device=x.device)
        f = self.consistency_function(network, x_t, times)
        return f.clamp(-1.0, 1.0) if self.clip_denoised else f

    # ----------------------------------------------------------------------------------------------------
    # Training
    # ----------------------------------------------------------------------------------------------------
    def training_times(self, t: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        """``(B,)`` float64 TrigFlow times t = arctan(e^tau / sigma_d), tau ~ N(P_mean, P_std^2); for validation's
        integer ``t``, tau at the (t + 0.5) / T quantile."""
        if t is None:
            tau = torch.randn(batch, device=device, dtype=torch.float64)
        else:
            u = (t.to(device=device, dtype=torch.float64) + 0.5) / self.num_timesteps
            tau = math.sqrt(2) * torch.erfinv(2 * u - 1)  # Phi^{-1}(u)
        return torch.atan((self.p_mean + self.p_std * tau).exp() / self.sigma_data)

    def warmup(self) -> float:
        """The tangent warm-up r in [0, 1] at this optimizer step."""
        return 1.0 if self.tangent_warmup_steps == 0 else min(1.0, self._step_count() / self.tangent_warmup_steps)

    def compute_loss(self, model: nn.Module, x0: torch.Tensor, *, t: torch.Tensor | None = None,
                     noise: torch.Tensor | None = None, **model_kwargs: Any) -> torch.Tensor:
        """The continuous-time consistency loss with tangent normalisation and adaptive weighting (module
        docstring), averaged over the batch."""
        times = self.training_times(t, x0.shape[0], x0.device)  # (B,) float64
        noise = torch.randn_like(x0) if noise is None else noise
        x_t = self.q_sample(x0, times, noise)
        kwargs = self.condition_kwargs(model, model_kwargs)  # labels dropped with cond_drop_prob
        if self.teacher is None:  # sCT: the conditional velocity cos(t) z - sin(t) x_0
            velocity = broadcast(times.cos() * self.sigma_data, x0) * noise - broadcast(times.sin(), x0) * x0
        else:
            velocity = self.teacher.velocity(x_t, times, kwargs)
        output = model(x_t / self.sigma_data, self.network_time(times), **kwargs).float()
        tangent = self.tangent(model, x_t, times, velocity, output.detach(), kwargs)
        per_sample = (output - output.detach() - tangent).pow(2).flatten(1).mean(1)  # (B,) ||.||^2 / D
        if not self.adaptive_weighting:
            return per_sample.mean()
        u = getattr(bare_network(model), WEIGHT_NAME)(self.network_time(times)).float()  # (B,)
        return (per_sample * torch.exp(-u) + u).mean()

    def tangent(self, model: nn.Module, x_t: torch.Tensor, t: torch.Tensor, velocity: torch.Tensor,
                output: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        """g / (||g|| + c) ``(B, ...)`` float32, with the warm-up r; ``output`` is sg(F)."""
        cos, sin = broadcast(t.cos(), output), broadcast(t.sin(), output)
        scaled_derivative = self.time_derivative(model, x_t, t, velocity, kwargs).float()  # cos sin dF/dt
        x_t, velocity = x_t.float(), velocity.float()
        g = -cos**2 * (self.sigma_data * output - velocity)
        g = g - self.warmup() * (cos * sin * x_t + self.sigma_data * scaled_derivative)
        norm = g.flatten(1).norm(dim=1)  # (B,)
        return g / broadcast(norm + self.tangent_norm_c, g)

    def time_derivative(self, model: nn.Module, x_t: torch.Tensor, t: torch.Tensor, velocity: torch.Tensor,
                        kwargs: dict[str, Any]) -> torch.Tensor:
        """cos(t) sin(t) dF^-/dt ``(B, ...)``: one forward-mode JVP of F(x_t / sigma_d, c_noise(t)) with tangent
        cos(t) sin(t) (dx_t / dt, 1), without gradients (F^- is stop-gradient): :func:`target_jvp`."""
        network = bare_network(model)

        def trigflow_network(x: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
            return network(x / self.sigma_data, times * self.time_scale, **kwargs)

        weight = (t.cos() * t.sin()).float()  # (B,)
        tangents = (broadcast(weight, x_t) * velocity.to(x_t.dtype), weight)
        return target_jvp(network, trigflow_network, (x_t, t), tangents)

    def extra_repr(self) -> str:
        return (f"sigma_data={self.sigma_data}, p_mean={self.p_mean}, p_std={self.p_std}, t_mid={self.t_mid}, "
                f"tangent_warmup_steps={self.tangent_warmup_steps}, adaptive_weighting={self.adaptive_weighting}, "
                f"distilled={self.teacher is not None}")

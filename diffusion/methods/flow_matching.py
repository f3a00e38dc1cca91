"""Flow matching (Lipman et al. 2023; Liu et al. 2023, rectified flow; Ma et al. 2024, SiT): a network regresses the
velocity of an affine path from noise to data, and sampling integrates that velocity field.

Notation (Lipman et al. 2024, "Flow Matching Guide and Code", Sec. 4.8, and Meta's ``flow_matching`` package):
time runs from noise to data, t = 0 is pure noise and t = 1 the data.

    x_t      = alpha_t y + sigma_t n,  y ~ data, n ~ N(0, I)                      (Guide eq. 4.61)
    u_t      = d_alpha_t y + d_sigma_t n, the conditional velocity the network regresses (eq. 4.62)
    path     ``linear``: alpha = t, sigma = 1 - t (conditional OT, rectified flow; Guide eq. 4.71)
             ``cosine``: alpha = sin(pi t / 2), sigma = cos(pi t / 2) (SiT's GVP, alpha^2 + sigma^2 = 1)
             ``vp``: alpha = exp(-T(t) / 2), sigma = sqrt(1 - alpha^2), T(t) = (1 - t)^2 (beta_max - beta_min) / 2
                     + (1 - t) beta_min (Song et al. 2021, eq. 33 reversed; SiT's VP path, beta 0.1 -> 20)
    prediction  ``velocity`` u, ``x0`` y, ``noise`` n: any one fixes the other two at (x_t, t) (Guide eq. 4.75)
    sigma-space  x = x_t / alpha_t, sigma = sigma_t / alpha_t (Karras et al. 2022, eq. 1): the Gaussian solvers
             step D(x; sigma) = E[y | x_t] through the score of the path, t = the inverse of the SNR alpha/sigma
    t sampling  ``uniform``; ``logit_normal``: 1 - t = sigmoid(m + s z), z ~ N(0, 1) (Esser et al. 2024, SD3 eq. 19);
             ``mode``: 1 - t = f(u) = 1 - u - scale (cos^2(pi u / 2) - 1 + u), u ~ U(0, 1) (SD3 eq. 20)
    shift    sampling times 1 - t' = shift (1 - t) / (1 + (shift - 1)(1 - t)) (SD3 eq. 23): shift > 1 spends the
             steps near the noise end

SD3 counts time from data to noise; its 1 - t is this t, so m and shift keep SD3's meaning. Schedulers and
prediction conversions are Meta's ``flow_matching`` (float64); its ``ODESolver`` is not used: the sampling
package's solvers are shared by every method.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal, get_args

import torch
import torch.nn.functional as F
from flow_matching.path import AffineProbPath
from flow_matching.path.scheduler import CondOTScheduler, CosineScheduler, Scheduler, VPScheduler
from torch import nn

from diffusion.methods.base import BaseMethod, GridKind, Network, broadcast
from diffusion.runtime.checks import ConfigError, check_choice, check_float, check_int

Path = Literal["linear", "cosine", "vp"]
FlowPrediction = Literal["velocity", "x0", "noise"]
TimeSampling = Literal["uniform", "logit_normal", "mode"]
Coupling = Literal["independent", "ot"]
PATHS: tuple[str, ...] = get_args(Path)
FLOW_PREDICTIONS: tuple[str, ...] = get_args(FlowPrediction)
TIME_SAMPLINGS: tuple[str, ...] = get_args(TimeSampling)
COUPLINGS: tuple[str, ...] = get_args(Coupling)
FLOW_SOLVERS = ("euler", "heun", "midpoint", "dopri5", "euler_maruyama", "ddpm", "ddim", "dpm_solver",
                "dpmpp_2m_karras")
_META_NAMES = {"velocity": "velocity", "x0": "target", "noise": "epsilon"}  # AffineProbPath's names
# Noise prediction fixes y = (x_t - sigma_t n) / alpha_t: undefined at alpha = 0, so its sampling starts here
# (SiT's sample_eps). At the data end sigma = 0: x0 prediction's n = (x_t - alpha_t y) / sigma_t is 0 / 0 and the
# vp path's d_sigma = T' e^{-T} / (2 sigma) is infinite, so a velocity that needs them is taken just before it.
_NOISE_START, _DATA_END = 1e-3, 1.0 - 1e-5


def make_scheduler(path: str) -> Scheduler:
    """Meta's scheduler of ``path`` (alpha_t, sigma_t and their derivatives; ``snr_inverse``)."""
    check_choice(path, "method.path", PATHS)
    return {"linear": CondOTScheduler, "cosine": CosineScheduler, "vp": VPScheduler}[path]()


class FlowMatching(BaseMethod):
    """Flow matching on an affine path (``method=flow_matching``); sampled in time by the flow solvers or in sigma
    space by the Gaussian ones. Settings: see conf/method/flow_matching.yaml.

    Raises:
        ConfigError: naming the ``method.*`` key of an invalid argument.
    """

    name = "flow_matching"
    solvers: ClassVar[tuple[str, ...]] = FLOW_SOLVERS
    grids: ClassVar[tuple[GridKind, ...]] = ("time", "schedule", "karras")

    def __init__(self, path: Path = "linear", prediction: FlowPrediction = "velocity",
                 time_sampling: TimeSampling = "logit_normal", m: float = 0.0, s: float = 1.0, scale: float = 1.29,
                 shift: float = 1.0, coupling: Coupling = "independent", num_timesteps: int = 1000,
                 sigma_min: float = 0.002, sigma_max: float = 80.0, clip_denoised: bool = True,
                 cond_drop_prob: float = 0.1, default_solver: str = "euler") -> None:
        super().__init__()
        self.path: Path = check_choice(path, "method.path", PATHS)
        self.prediction: FlowPrediction = check_choice(prediction, "method.prediction", FLOW_PREDICTIONS)
        self.time_sampling: TimeSampling = check_choice(time_sampling, "method.time_sampling", TIME_SAMPLINGS)
        self.m, self.s = check_float(m, "method.m"), check_float(s, "method.s", minimum=0.0, inclusive=False)
        # f(u) is monotone (a valid inverse CDF) only for scale in [-1, 2 / (pi - 2)] (SD3 Sec. 3.1).
        self.scale = check_float(scale, "method.scale", -1.0, 2 / (math.pi - 2))
        self.shift = check_float(shift, "method.shift", minimum=0.0, inclusive=False)
        self.coupling: Coupling = check_choice(coupling, "method.coupling", COUPLINGS)
        self.num_timesteps = check_int(num_timesteps, "method.num_timesteps", minimum=1)
        self.sigma_min = check_float(sigma_min, "method.sigma_min", minimum=0.0, inclusive=False)
        self.sigma_max = check_float(sigma_max, "method.sigma_max", minimum=self.sigma_min)
        self.clip_denoised = bool(clip_denoised)
        self.cond_drop_prob = check_float(cond_drop_prob, "method.cond_drop_prob", 0.0, 1.0)
        self.default_solver = self.check_solver(default_solver)
        self.scheduler = make_scheduler(self.path)
        self.affine = AffineProbPath(self.scheduler)

    # ----------------------------------------------------------------------------------------------------
    # The path
    # ----------------------------------------------------------------------------------------------------
    def path_coefficients(self, t: torch.Tensor | float) -> tuple[torch.Tensor, ...]:
        """(alpha_t, sigma_t, d_alpha_t, d_sigma_t), float64, shaped like ``t``."""
        out = self.scheduler(torch.as_tensor(t, dtype=torch.float64))
        return out.alpha_t, out.sigma_t, out.d_alpha_t, out.d_sigma_t

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = alpha_t y + sigma_t n (Guide eq. 4.61) at per-sample times ``t`` ``(B,)`` in [0, 1]."""
        alpha, sigma, _, _ = self.path_coefficients(t.to(x0.device))
        return broadcast(alpha, x0) * x0 + broadcast(sigma, x0) * noise

    def convert(self, value: torch.Tensor, source: str, target: str, x_t: torch.Tensor,
                t: torch.Tensor) -> torch.Tensor:
        """``value`` as ``source`` prediction (velocity, x0, noise) turned into ``target`` at (x_t, t ``(B,)``):
        the affine path's closed forms (AffineProbPath), in float64, returned in ``x_t``'s dtype."""
        if source == target:
            return value
        convert = getattr(self.affine, f"{_META_NAMES[source]}_to_{_META_NAMES[target]}")
        t64 = broadcast(t.to(device=x_t.device, dtype=torch.float64), x_t.double())  # (B, 1, ...)
        return convert(value.double(), x_t.double(), t64).to(x_t.dtype)

    def network_time(self, t: torch.Tensor) -> torch.Tensor:
        """The float timestep the network embeds: T t, the range its sinusoidal embedding was made for."""
        return t.float() * self.num_timesteps

    def velocity(self, network: Network, x_t: torch.Tensor, t: float) -> torch.Tensor:
        """The velocity field u(x_t, t) ``(B, ...)`` of the network, whatever it predicts (the flow solvers' field)."""
        if self.prediction == "velocity":  # no conversion: the float32 network time, as network_time rounds it
            return network(x_t, torch.full((x_t.shape[0],), t, device=x_t.device).mul_(self.num_timesteps))
        t = min(t, _DATA_END)
        times = torch.full((x_t.shape[0],), t, dtype=torch.float64, device=x_t.device)
        return self.convert(network(x_t, self.network_time(times)), self.prediction, "velocity", x_t, times)

    @property
    def end_time(self) -> float:
        """Where a likelihood's ODE starts from the data: 1, or just before it on the vp path (d_sigma = inf at 1)."""
        return _DATA_END if self.path == "vp" else 1.0

    @property
    def start_time(self) -> float:
        """Where sampling starts: 0 (pure noise), or 1e-3 for noise prediction, whose D is undefined at 0."""
        return _NOISE_START if self.prediction == "noise" else 0.0

    def sampling_times(self, steps: int) -> list[float]:
        """``steps + 1`` ascending times from :attr:`start_time` to 1, uniform then shifted by SD3's ``shift``: the
        flow solvers' fixed grid."""
        check_int(steps, "sampler.steps", minimum=1)
        uniform = torch.linspace(self.start_time, 1.0, steps + 1, dtype=torch.float64)
        noise_level = 1 - uniform  # SD3's time
        shifted = 1 - self.shift * noise_level / (1 + (self.shift - 1) * noise_level)
        return shifted.tolist()

    # ----------------------------------------------------------------------------------------------------
    # The denoiser the Gaussian solvers step (sigma space)
    # ----------------------------------------------------------------------------------------------------
    def time_of_sigma(self, sigma: float) -> float:
        """The time t whose sigma_t / alpha_t is ``sigma``: the inverse of the SNR alpha_t / sigma_t (0 at inf)."""
        if math.isinf(sigma):
            return 0.0
        snr = torch.tensor(1 / sigma if sigma > 0 else math.inf, dtype=torch.float64)
        return float(self.scheduler.snr_inverse(snr).clamp(0.0, 1.0))

    def sigma_of_time(self, t: float) -> float:
        """sigma_t / alpha_t (inf where alpha_t = 0)."""
        alpha, sigma, _, _ = self.path_coefficients(t)
        return math.inf if alpha == 0 else float(sigma / alpha)

    def schedule_sigmas(self) -> torch.Tensor:
        """``(T,)`` ascending sigma-space levels at t = 1 - (k + 1) / T over [:attr:`start_time`, 1] (inf at t = 0
        on the linear and cosine paths, like a zero-terminal-SNR schedule)."""
        start = self.start_time
        times = [start + (1 - start) * (1 - (k + 1) / self.num_timesteps) for k in range(self.num_timesteps)]
        return torch.tensor([self.sigma_of_time(t) for t in times], dtype=torch.float64)

    def denoise(self, network: Network, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """D(x; sigma) = E[y | x_t] at x_t = alpha_t x, t = t(sigma); at sigma = inf (alpha = 0) x holds the unit
        noise n, and x_t = sigma_0 n."""
        t = self.time_of_sigma(sigma)
        alpha, sigma_t, _, _ = (float(c) for c in self.path_coefficients(t))
        x_t = x * (sigma_t if math.isinf(sigma) else alpha)
        times = torch.full((x.shape[0],), t, dtype=torch.float64, device=x.device)
        output = network(x_t, self.network_time(times))
        denoised = self.convert(output, self.prediction, "x0", x_t, times)
        return denoised.clamp(-1.0, 1.0) if self.clip_denoised else denoised

    # ----------------------------------------------------------------------------------------------------
    # Training
    # ----------------------------------------------------------------------------------------------------
    def training_times(self, t: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        """``(B,)`` float64 times: draws of ``time_sampling`` (global RNG), or for integer ``t`` (validation) its
        (t + 0.5) / T quantiles, so the validation loss is a fixed sweep over the training distribution."""
        if t is None and self.time_sampling == "logit_normal":  # t = 1 - sigmoid(m + s z), z drawn directly
            z = torch.randn(batch, device=device, dtype=torch.float64)
            return z.mul_(-self.s).sub_(self.m).sigmoid_()
        if t is None:
            u = torch.rand(batch, device=device, dtype=torch.float64)
        else:
            u = (t.to(device=device, dtype=torch.float64) + 0.5) / self.num_timesteps
        if self.time_sampling == "uniform":
            return u
        if self.time_sampling == "logit_normal":  # z = Phi^{-1}(1 - u), a normal draw, so t grows with u
            z = math.sqrt(2) * torch.erfinv(1 - 2 * u)
            return 1 - torch.sigmoid(self.m + self.s * z)
        noise_level = 1 - u - self.scale * (torch.cos(math.pi / 2 * u) ** 2 - 1 + u)  # decreasing in u
        return (1 - noise_level).clamp(0.0, 1.0)

    def couple(self, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The noise reordered so that sum_i ||y_i - n_i||^2 is least over the batch (the exact assignment of
        scipy's ``linear_sum_assignment``); ``independent`` returns it as drawn."""
        if self.coupling == "independent":
            return noise
        cost = torch.cdist(x0.flatten(1).double(), noise.flatten(1).double()).pow(2)  # (B, B)
        from scipy.optimize import linear_sum_assignment  # here: scipy.optimize adds ~0.3 s to every start-up

        _, columns = linear_sum_assignment(cost.cpu().numpy())
        return noise[torch.as_tensor(columns, device=noise.device)]

    def training_target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the network regresses: u_t = d_alpha y + d_sigma n (eq. 4.62), y, or n."""
        return self.interpolate(x0, t, noise)[1]

    def interpolate(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_t, the training target) from one evaluation of the path's coefficients: a training step's small
        tensor operations are its overhead on a small network."""
        if self.path == "linear":  # alpha = t, sigma = 1 - t in closed form: x_t = n + t (y - n), u = y - n
            velocity = x0 - noise
            x_t = torch.addcmul(noise, broadcast(t.to(x0.device), x0), velocity)
        else:
            alpha, sigma, d_alpha, d_sigma = (broadcast(c, x0) for c in self.path_coefficients(t.to(x0.device)))
            x_t = torch.addcmul(sigma * noise, alpha, x0)
            velocity = torch.addcmul(d_sigma * noise, d_alpha, x0)
        return x_t, {"x0": x0, "noise": noise, "velocity": velocity}[self.prediction]

    def compute_loss(self, model: nn.Module, x0: torch.Tensor, *, t: torch.Tensor | None = None,
                     noise: torch.Tensor | None = None, **model_kwargs: Any) -> torch.Tensor:
        """The conditional flow-matching loss (Guide eq. 4.63 for velocity; the MSE of y or n otherwise): the
        mean squared error of the network's target at x_t. Drawn noise is paired by ``coupling``; labels are
        dropped in training with ``cond_drop_prob``."""
        times = self.training_times(t, x0.shape[0], x0.device)  # (B,) float64
        noise = self.couple(x0, torch.randn_like(x0)) if noise is None else noise
        x_t, target = self.interpolate(x0, times, noise)
        output = model(x_t, self.network_time(times), **self.condition_kwargs(model, model_kwargs))
        return F.mse_loss(output.float(), target.float())

    def extra_repr(self) -> str:
        return (f"path={self.path!r}, prediction={self.prediction!r}, time_sampling={self.time_sampling!r}, "
                f"shift={self.shift}, coupling={self.coupling!r}, default_solver={self.default_solver!r}")


class PairedFlowMatching(FlowMatching):
    """Flow matching on a fixed coupling (reflow, Liu et al. 2023, Alg. 1): each row packs a sample and the noise the
    teacher's ODE carried to it along dim 1, ``(B, 2 C, ...)`` or ``(B, 2 D)``; that noise replaces any other.

    Raises:
        ConfigError: ``method.coupling=ot`` (the pairs are the coupling).
    """

    def __init__(self, **kwargs: Any) -> None:
        if kwargs.get("coupling", "independent") != "independent":
            raise ConfigError("method.coupling must be independent for reflow: the teacher's pairs are the coupling")
        super().__init__(**kwargs)

    def compute_loss(self, model: nn.Module, x0: torch.Tensor, *, t: torch.Tensor | None = None,
                     noise: torch.Tensor | None = None, **model_kwargs: Any) -> torch.Tensor:
        sample, paired_noise = x0.chunk(2, dim=1)
        return super().compute_loss(model, sample, t=t, noise=paired_noise, **model_kwargs)

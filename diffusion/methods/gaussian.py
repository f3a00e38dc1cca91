"""The discrete-time variance-preserving Gaussian diffusion (DDPM, Ho et al. 2020): schedule, T, prediction target.

Notation (0-based step index t in [0, T), as in the schedule functions):

    betas[t]                         = beta_t
    alphas_cumprod[t]                = abar_t = prod_{s <= t} (1 - beta_s)
    alphas_cumprod_prev[t]           = abar_{t-1}, with abar_{-1} = 1
    sqrt_one_minus_alphas_cumprod[t] = sqrt(1 - abar_t)
    posterior_variance[t]            = beta_tilde_t = (1 - abar_{t-1}) / (1 - abar_t) * beta_t   (Ho et al. eq. 7)
    snr[t]                           = SNR_t = abar_t / (1 - abar_t)                             (Kingma et al. 2021)
    sigma_t = sqrt((1 - abar_t) / abar_t)    the level in sigma space: x_t = sqrt(abar_t) x, x = y + sigma_t n
                                             (Karras et al. 2022, Table 1 "VP"; ``schedule_sigmas``)

With a zero-terminal-SNR schedule (abar_{T-1} = 0, Lin et al. 2024) every buffer stays finite: the only
denominator that vanishes there is sqrt(abar_t), used by epsilon prediction alone, which is refused.
Buffers are float64, gathered per sample, then cast to the sample's dtype.
"""

from __future__ import annotations

import bisect
import math
from typing import Any, ClassVar, Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.methods.base import BaseMethod, GridKind, Network, broadcast, extract, vp_scale
from diffusion.methods.schedules import Schedule
from diffusion.runtime.checks import ConfigError, check_choice, check_float, check_int

Timestep = torch.Tensor | int  # (B,) per-sample timesteps, or one int the whole batch shares
Prediction = Literal["epsilon", "x0", "v"]
LossWeighting = Literal["uniform", "min_snr"]
PREDICTIONS: tuple[str, ...] = get_args(Prediction)
LOSS_WEIGHTINGS: tuple[str, ...] = get_args(LossWeighting)
GAUSSIAN_SOLVERS = ("ddpm", "ddim", "dpm_solver", "euler", "heun", "dpmpp_2m_karras")


class GaussianDiffusion(BaseMethod):
    """A discrete-time Gaussian diffusion; any of its solvers samples the same trained network.
    Settings: see conf/method/gaussian.yaml (``schedule``: conf/schedule/*.yaml).

    Raises:
        ConfigError: naming the ``method.*`` key of an invalid argument, or epsilon prediction with a
            zero-terminal-SNR schedule.
    """

    name = "gaussian"
    solvers: ClassVar[tuple[str, ...]] = GAUSSIAN_SOLVERS
    grids: ClassVar[tuple[GridKind, ...]] = ("schedule", "karras")

    def __init__(
        self,
        schedule: Schedule,
        num_timesteps: int = 1000,
        prediction: Prediction = "epsilon",
        clip_denoised: bool = True,
        loss_weighting: LossWeighting = "uniform",
        snr_gamma: float = 5.0,
        cond_drop_prob: float = 0.1,
        default_solver: str = "ddpm",
    ) -> None:
        super().__init__()
        self.num_timesteps = check_int(num_timesteps, "method.num_timesteps", minimum=1)
        self.prediction: Prediction = check_choice(prediction, "method.prediction", PREDICTIONS)
        self.clip_denoised = bool(clip_denoised)
        self.loss_weighting: LossWeighting = check_choice(loss_weighting, "method.loss_weighting", LOSS_WEIGHTINGS)
        self.snr_gamma = check_float(snr_gamma, "method.snr_gamma", minimum=0.0, inclusive=False)
        self.cond_drop_prob = check_float(cond_drop_prob, "method.cond_drop_prob", 0.0, 1.0)
        self.default_solver = self.check_solver(default_solver)

        betas = schedule(self.num_timesteps).to(torch.float64)
        assert betas.shape == (self.num_timesteps,), f"schedule returned shape {tuple(betas.shape)}"
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        alphas_cumprod_prev = F.pad(alphas_cumprod[:-1], (1, 0), value=1.0)
        if self.prediction == "epsilon" and alphas_cumprod[-1] == 0:
            raise ConfigError(
                "method.prediction=epsilon cannot be used with schedule.zero_terminal_snr=true (abar_T = 0 makes "
                "x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) divide by 0); use method.prediction=v"
            )
        self._buffer("betas", betas)
        self._buffer("alphas_cumprod", alphas_cumprod)
        self._buffer("alphas_cumprod_prev", alphas_cumprod_prev)
        self._buffer("sqrt_alphas_cumprod", alphas_cumprod.sqrt())
        self._buffer("sqrt_one_minus_alphas_cumprod", (1.0 - alphas_cumprod).sqrt())
        self._buffer("posterior_variance", betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod))
        self._buffer("snr", alphas_cumprod / (1.0 - alphas_cumprod))
        # Posterior mean mu_tilde = coef1 * x0 + coef2 * x_t (Ho et al. eq. 7).
        self._buffer("posterior_mean_coef1", betas * alphas_cumprod_prev.sqrt() / (1.0 - alphas_cumprod))
        self._buffer(
            "posterior_mean_coef2", (1.0 - alphas_cumprod_prev) * (1.0 - betas).sqrt() / (1.0 - alphas_cumprod)
        )
        sigmas = ((1.0 - alphas_cumprod) / alphas_cumprod).sqrt()  # (T,) ascending; inf at abar = 0
        self._buffer("sigmas", sigmas)
        self._sigma_list: list[float] = sigmas.tolist()
        self._log_sigmas: list[float] = sigmas.log().tolist()
        self.sigma_min, self.sigma_max = self._sigma_list[0], self._sigma_list[-1]
        self._tables: dict[str, list[float]] = {}  # buffers as Python floats, filled by coefficient()

    def _buffer(self, name: str, value: torch.Tensor) -> None:
        # Not persistent: the schedule is rebuilt from the config, so checkpoints hold only learned state.
        self.register_buffer(name, value, persistent=False)

    def coefficient(self, name: str, t: Timestep, like: torch.Tensor) -> torch.Tensor | float:
        """Buffer ``name`` at ``t``: a float64 Python number for an int ``t`` (one kernel per scaling, no gather),
        else :func:`extract`'s ``(B, 1, ...)``."""
        if isinstance(t, torch.Tensor):
            return extract(getattr(self, name), t, like)
        table = self._tables.get(name)
        if table is None:
            table = self._tables[name] = getattr(self, name).tolist()
        return table[t]

    # ----------------------------------------------------------------------------------------------------
    # Forward process and parameterisations
    # ----------------------------------------------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) (Ho et al. eq. 4); t is (B,) long."""
        return extract(self.sqrt_alphas_cumprod, t, x0) * x0 + extract(
            self.sqrt_one_minus_alphas_cumprod, t, x0
        ) * noise

    def training_target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the network should output for (x0, t, noise) under ``self.prediction``."""
        if self.prediction == "epsilon":
            return noise
        if self.prediction == "x0":
            return x0
        return extract(self.sqrt_alphas_cumprod, t, x0) * noise - extract(
            self.sqrt_one_minus_alphas_cumprod, t, x0
        ) * x0

    def predict_x0(self, x_t: torch.Tensor, t: Timestep, model_output: torch.Tensor) -> torch.Tensor:
        """x0 implied by the network output (unclipped)."""
        sqrt_abar = self.coefficient("sqrt_alphas_cumprod", t, x_t)
        sqrt_one_minus_abar = self.coefficient("sqrt_one_minus_alphas_cumprod", t, x_t)
        return self.x0_from_output(x_t, sqrt_abar, sqrt_one_minus_abar, model_output)

    def x0_from_output(self, x_t: torch.Tensor, sqrt_abar: torch.Tensor | float,
                       sqrt_one_minus_abar: torch.Tensor | float, model_output: torch.Tensor) -> torch.Tensor:
        """x0 implied by the network output at the noise level (sqrt(abar), sqrt(1 - abar)), on the schedule or
        between its levels."""
        if self.prediction == "epsilon":
            return (x_t - sqrt_one_minus_abar * model_output) / sqrt_abar
        if self.prediction == "x0":
            return model_output
        return sqrt_abar * x_t - sqrt_one_minus_abar * model_output

    def predict_epsilon(self, x_t: torch.Tensor, t: Timestep, model_output: torch.Tensor) -> torch.Tensor:
        """epsilon implied by the network output."""
        sqrt_abar = self.coefficient("sqrt_alphas_cumprod", t, x_t)
        sqrt_one_minus_abar = self.coefficient("sqrt_one_minus_alphas_cumprod", t, x_t)
        if self.prediction == "epsilon":
            return model_output
        if self.prediction == "x0":
            return (x_t - sqrt_abar * model_output) / sqrt_one_minus_abar
        return sqrt_one_minus_abar * x_t + sqrt_abar * model_output

    def _denoised(self, x_t: torch.Tensor, t: Timestep, model_output: torch.Tensor) -> torch.Tensor:
        x0 = self.predict_x0(x_t, t, model_output)
        return x0.clamp(-1.0, 1.0) if self.clip_denoised else x0

    # ----------------------------------------------------------------------------------------------------
    # The denoiser every solver steps (sigma space)
    # ----------------------------------------------------------------------------------------------------
    def schedule_sigmas(self) -> torch.Tensor:
        return self.sigmas

    def sigma_to_t(self, sigma: float) -> float:
        """The timestep of level ``sigma``: exact for a schedule sigma, else linear in log sigma between the two
        neighbouring timesteps (k-diffusion's ``sigma_to_t``; the networks embed float timesteps smoothly)."""
        index = bisect.bisect_left(self._sigma_list, sigma)  # Python floats: no device round trip per call
        if index < self.num_timesteps and self._sigma_list[index] == sigma:
            return float(index)
        high = min(max(index, 1), self.num_timesteps - 1)
        low, log_sigmas = high - 1, self._log_sigmas
        weight = (math.log(sigma) - log_sigmas[low]) / (log_sigmas[high] - log_sigmas[low])
        return low + min(max(weight, 0.0), 1.0)

    def denoise(self, network: Network, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """D(x; sigma) = x0 predicted from x_t = x / sqrt(1 + sigma^2) at t(sigma), with abar = 1 / (1 + sigma^2)
        of the sigma itself, so D is exact at every sigma for the network's output (Karras et al. 2022, Table 1)."""
        if math.isinf(sigma):  # abar = 0: x holds the unit noise, which is x_t
            x_t, sqrt_abar, sqrt_one_minus_abar = x, 0.0, 1.0
        else:
            sqrt_abar = vp_scale(sigma)
            x_t, sqrt_one_minus_abar = x * sqrt_abar, sigma * sqrt_abar
        t = torch.full((x.shape[0],), self.sigma_to_t(sigma), device=x.device)  # (B,) float
        x0 = self.x0_from_output(x_t, sqrt_abar, sqrt_one_minus_abar, network(x_t, t))
        return x0.clamp(-1.0, 1.0) if self.clip_denoised else x0

    # ----------------------------------------------------------------------------------------------------
    # Training
    # ----------------------------------------------------------------------------------------------------
    def compute_loss(self, model: nn.Module, x0: torch.Tensor, *, t: torch.Tensor | None = None,
                     noise: torch.Tensor | None = None, **model_kwargs: Any) -> torch.Tensor:
        """Simple loss (Ho et al. eq. 14): MSE between the network output and the prediction target, ``t`` uniform
        over [0, T); ``min_snr`` weights each sample's mean squared error by :meth:`loss_weights`. Labels are
        dropped (:meth:`condition_kwargs`) only while ``model.training``, like ``nn.Dropout``."""
        if t is None:
            t = torch.randint(0, self.num_timesteps, (x0.shape[0],), device=x0.device)
        if noise is None:
            noise = torch.randn_like(x0)
        x_t = self.q_sample(x0, t, noise)
        model_output = model(x_t, t, **self.condition_kwargs(model, model_kwargs))
        target = self.training_target(x0, t, noise)
        if self.loss_weighting == "uniform":
            return F.mse_loss(model_output.float(), target.float())
        per_sample = F.mse_loss(model_output.float(), target.float(), reduction="none").flatten(1).mean(1)  # (B,)
        return (self.loss_weights(t).to(per_sample) * per_sample).mean()

    def loss_weights(self, t: torch.Tensor) -> torch.Tensor:
        """Per-sample loss weights ``(B,)`` (float64): min-SNR-gamma (Hang et al. 2023) weights the x0-space loss by
        min(SNR_t, gamma), i.e. the target's own MSE by min(SNR, gamma) / SNR (epsilon; 1 at SNR = 0), min(SNR, gamma)
        (x0) or min(SNR, gamma) / (SNR + 1) (v). ``uniform`` gives ones.
        """
        snr = self.snr.to(t.device)[t]  # (B,)
        if self.loss_weighting == "uniform":
            return torch.ones_like(snr)
        if self.prediction == "epsilon":
            return (self.snr_gamma / snr).clamp(max=1.0)
        clipped = snr.clamp(max=self.snr_gamma)
        return clipped if self.prediction == "x0" else clipped / (snr + 1.0)

    # ----------------------------------------------------------------------------------------------------
    # Reverse steps on the schedule's own timesteps (distillation teachers take them one at a time)
    # ----------------------------------------------------------------------------------------------------
    def p_sample(self, x_t: torch.Tensor, t: Timestep, model_output: torch.Tensor,
                 noise: torch.Tensor | None = None) -> torch.Tensor:
        """Ancestral step x_t -> x_{t-1} ~ N(mu_tilde(x_t, x0_hat), beta_tilde_t I) (Ho et al. eqs. 6-7); no noise
        where ``t == 0``."""
        if isinstance(t, torch.Tensor):
            t = self._as_batch(t, x_t)
        x0 = self._denoised(x_t, t, model_output)
        mean = self.coefficient("posterior_mean_coef1", t, x_t) * x0 + self.coefficient(
            "posterior_mean_coef2", t, x_t) * x_t
        if noise is None:
            noise = torch.randn_like(x_t)
        std = self.coefficient("posterior_variance", t, x_t) ** 0.5  # sqrt(beta_tilde_t)
        if not isinstance(t, torch.Tensor):
            return mean + std * noise if t != 0 else mean
        return mean + broadcast((t != 0).to(x_t.dtype), x_t) * std * noise

    def ddim_step(self, x_t: torch.Tensor, t: Timestep, t_prev: Timestep, model_output: torch.Tensor,
                  eta: float = 0.0, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Generalised step x_t -> x_{t_prev} (Song et al. 2021, eq. 12): x_prev = sqrt(abar_prev) x0_hat +
        sqrt(1 - abar_prev - s^2) eps_hat + s z, s = eta sqrt((1 - abar_prev) / (1 - abar_t) (1 - abar_t /
        abar_prev)) (eq. 16); ``t_prev < 0`` is clean data. With ``clip_denoised``, eps_hat is re-derived from the
        clipped x0_hat so both stay one point of the trajectory (guided-diffusion's DDIM)."""
        if isinstance(t, torch.Tensor):
            t = self._as_batch(t, x_t)
        abar_t = self.coefficient("alphas_cumprod", t, x_t)
        if isinstance(t_prev, torch.Tensor):
            abar_prev = extract(self.alphas_cumprod, self._as_batch(t_prev, x_t), x_t, clean=1.0)
        else:
            abar_prev = self.coefficient("alphas_cumprod", t_prev, x_t) if t_prev >= 0 else 1.0
        x0 = self._denoised(x_t, t, model_output)
        if self.clip_denoised:
            eps = (x_t - self.coefficient("sqrt_alphas_cumprod", t, x_t) * x0) / self.coefficient(
                "sqrt_one_minus_alphas_cumprod", t, x_t)
        else:
            eps = self.predict_epsilon(x_t, t, model_output)
        sigma = eta * _sqrt_clamped((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev))
        x_prev = _sqrt_clamped(abar_prev) * x0 + _sqrt_clamped(1 - abar_prev - sigma**2) * eps
        if eta > 0:
            x_prev = x_prev + sigma * (torch.randn_like(x_t) if noise is None else noise)
        return x_prev

    @staticmethod
    def _as_batch(t: torch.Tensor | int, x: torch.Tensor) -> torch.Tensor:
        """An int or 0-d tensor becomes a (B,) LongTensor on x's device."""
        t = torch.as_tensor(t, device=x.device, dtype=torch.long)
        return t.expand(x.shape[0]) if t.dim() == 0 else t

    def sampler_name(self, solver: str) -> str:
        return solver  # the discrete diffusion's samplers are known by the solver's name (ddpm, ddim, heun...)

    def extra_repr(self) -> str:
        return (
            f"num_timesteps={self.num_timesteps}, prediction={self.prediction!r}, clip={self.clip_denoised}, "
            f"loss_weighting={self.loss_weighting!r}, cond_drop_prob={self.cond_drop_prob}, "
            f"default_solver={self.default_solver!r}"
        )


def _sqrt_clamped(value: torch.Tensor | float) -> torch.Tensor | float:
    """sqrt(max(value, 0)) of a tensor or a float (round-off can make a variance slightly negative)."""
    if isinstance(value, torch.Tensor):
        return value.clamp(min=0).sqrt()
    return math.sqrt(max(value, 0.0))

"""EDM (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models"): the diffusion
x = y + sigma n in sigma space, a preconditioned network, log-normal training noise levels and Heun sampling.

Notation map (EDM Table 1, "Ours" column -> code); F is the network, y a clean sample, n ~ N(0, I):

    c_skip(sigma)  = sigma_data^2 / (sigma^2 + sigma_data^2)
    c_out(sigma)   = sigma * sigma_data / sqrt(sigma^2 + sigma_data^2)
    c_in(sigma)    = 1 / sqrt(sigma^2 + sigma_data^2)
    c_noise(sigma) = ln(sigma) / 4                      (passed to the network as its float "timestep")
    D(x; sigma)    = c_skip x + c_out F(c_in x; c_noise)                                         (eq. 7)
    ln(sigma)      ~ N(P_mean, P_std^2) in training                                              (Table 1)
    lambda(sigma)  = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2, the loss weight
    loss           = E[lambda(sigma) ||D(y + sigma n; sigma) - y||^2]                            (eq. 8)

``loss_weighting=uncertainty`` (EDM2, eq. 21): E[lambda / e^u ||D - y||^2 + u], u(sigma) a learned log-variance
(``network.uncertainty(c_noise)``) that balances the noise levels' losses. With lambda = 1 / c_out^2 the loss is
F's plain MSE against its effective target (eq. 2); c_in and c_out keep input and target at unit variance.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from diffusion.methods.base import BaseMethod, GridKind, Network, broadcast
from diffusion.runtime.checks import ConfigError, check_choice, check_float, check_int

LossWeighting = Literal["edm", "uncertainty"]


class EDM(BaseMethod):
    """EDM training (``method=edm``); the same networks as DDPM, conditioned on c_noise; sampled over Karras sigmas.
    Settings: see conf/method/edm.yaml.

    Raises:
        ConfigError: naming the ``method.*`` key of an out-of-range argument, or for keys of another formulation
            (``schedule``, ``prediction``...).
    """

    name = "edm"
    solvers: ClassVar[tuple[str, ...]] = ("heun", "euler", "dpmpp_2m_karras")
    grids: ClassVar[tuple[GridKind, ...]] = ("karras",)
    prediction = "edm"  # F of eq. 7

    def __init__(
        self,
        num_timesteps: int = 1000,
        sigma_data: float = 0.5,
        p_mean: float = -1.2,
        p_std: float = 1.2,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        clip_denoised: bool = True,
        cond_drop_prob: float = 0.0,
        default_solver: str = "heun",
        loss_weighting: LossWeighting = "edm",
        **unknown: Any,
    ) -> None:
        super().__init__()
        if unknown:  # e.g. a Gaussian diffusion's schedule and prediction keys
            raise ConfigError(f"method=edm does not take {sorted(unknown)}: those belong to method=gaussian (ddpm, "
                              "ddim, ...); sample another run's method with sampler.solver=")
        self.num_timesteps = check_int(num_timesteps, "method.num_timesteps", minimum=1)
        self.sigma_data = check_float(sigma_data, "method.sigma_data", minimum=0.0, inclusive=False)
        self.p_mean = check_float(p_mean, "method.p_mean")
        self.p_std = check_float(p_std, "method.p_std", minimum=0.0)
        self.sigma_min = check_float(sigma_min, "method.sigma_min", minimum=0.0, inclusive=False)
        self.sigma_max = check_float(sigma_max, "method.sigma_max", minimum=0.0, inclusive=False)
        if self.sigma_max < self.sigma_min:
            raise ConfigError(f"method.sigma_max must be >= method.sigma_min={sigma_min}, got {sigma_max}")
        self.clip_denoised = bool(clip_denoised)
        self.cond_drop_prob = check_float(cond_drop_prob, "method.cond_drop_prob", 0.0, 1.0)
        self.default_solver = self.check_solver(default_solver)
        self.loss_weighting = check_choice(loss_weighting, "method.loss_weighting", ("edm", "uncertainty"))

    def check_network(self, network: nn.Module) -> None:
        if self.loss_weighting == "uncertainty" and not hasattr(network, "uncertainty"):
            raise ConfigError(f"method.loss_weighting=uncertainty needs a network with a learned uncertainty "
                              f"u(sigma) ({type(network).__name__} has none): use model=edm2_unet")

    # ----------------------------------------------------------------------------------------------------
    # Preconditioning (Table 1)
    # ----------------------------------------------------------------------------------------------------
    def preconditioning(self, sigma: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(c_skip, c_out, c_in, c_noise) for noise levels ``sigma`` (any shape, float64 recommended)."""
        sd2 = self.sigma_data**2
        norm = (sigma**2 + sd2).sqrt()
        return sd2 / norm**2, sigma * self.sigma_data / norm, 1 / norm, sigma.log() / 4

    def precondition(self, network: Network, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """D(x; sigma) of eq. 7 for ``x`` ``(B, ...)`` and per-sample ``sigma`` ``(B,)``, unclipped."""
        c_skip, c_out, c_in, c_noise = (c.to(x.dtype) for c in self.preconditioning(sigma.double()))
        output = network(broadcast(c_in, x) * x, c_noise)
        return broadcast(c_skip, x) * x + broadcast(c_out, x) * output.to(x.dtype)

    def denoise(self, network: Network, x: torch.Tensor, sigma: float) -> torch.Tensor:
        sigmas = torch.full((x.shape[0],), sigma, dtype=torch.float64, device=x.device)
        denoised = self.precondition(network, x, sigmas)
        return denoised.clamp(-1.0, 1.0) if self.clip_denoised else denoised

    def q_sample(self, x0: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x = y + sigma n (EDM eq. 1 with s(t) = 1), per-sample ``sigma`` ``(B,)``."""
        return x0 + broadcast(sigma, x0) * noise

    # ----------------------------------------------------------------------------------------------------
    # Training
    # ----------------------------------------------------------------------------------------------------
    def training_sigmas(self, t: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        """``(B,)`` float64 sigmas: log-normal draws (global RNG), or the quantiles of integer ``t`` (validation)."""
        if t is None:
            return (torch.randn(batch, device=device, dtype=torch.float64) * self.p_std + self.p_mean).exp()
        u = (t.to(device=device, dtype=torch.float64) + 0.5) / self.num_timesteps  # (B,) in (0, 1)
        return (self.p_mean + self.p_std * math.sqrt(2) * torch.erfinv(2 * u - 1)).exp()  # Phi^{-1}(u)

    def loss_weights(self, sigma: torch.Tensor) -> torch.Tensor:
        """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 (Table 1), same shape as ``sigma``."""
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2

    def compute_loss(self, model: nn.Module, x0: torch.Tensor, *, t: torch.Tensor | None = None,
                     noise: torch.Tensor | None = None, **model_kwargs: Any) -> torch.Tensor:
        """The weighted denoising loss of eq. 8, averaged over elements; ``t`` and ``noise`` as in DDPM's
        ``compute_loss`` (``t`` selects deterministic sigmas, see ``num_timesteps``); labels dropped in training
        with ``cond_drop_prob``, as :func:`~diffusion.methods.base.condition_kwargs` does."""
        sigma = self.training_sigmas(t, x0.shape[0], x0.device)  # (B,) float64
        if noise is None:
            noise = torch.randn_like(x0)
        kwargs = self.condition_kwargs(model, model_kwargs)
        x = self.q_sample(x0, sigma, noise)  # (B, ...)
        denoised = self.precondition(lambda x_in, c_noise: model(x_in, c_noise, **kwargs), x, sigma)
        per_sample = self.loss_weights(sigma).float() * (denoised.float() - x0.float()).pow(2).flatten(1).mean(1)
        if self.loss_weighting == "uncertainty":
            logvar = uncertainty_of(model)(self.preconditioning(sigma)[3].float()).float()  # u(sigma) (B,)
            per_sample = per_sample / logvar.exp() + logvar
        return per_sample.mean()

    def extra_repr(self) -> str:
        return (
            f"sigma_data={self.sigma_data}, p_mean={self.p_mean}, p_std={self.p_std}, sigma=[{self.sigma_min}, "
            f"{self.sigma_max}], default_solver={self.default_solver!r}, cond_drop_prob={self.cond_drop_prob}, "
            f"loss_weighting={self.loss_weighting!r}"
        )


def uncertainty_of(model: nn.Module) -> Any:
    """The network's u(c_noise), looked up through a DistributedDataParallel or compile wrapper."""
    found = getattr(model, "uncertainty", None) or getattr(getattr(model, "module", None), "uncertainty", None)
    assert found is not None, "check_network refuses loss_weighting=uncertainty without it"
    return found

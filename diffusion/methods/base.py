"""The Gaussian diffusion both DDPM and DDIM share: forward process, parameterisations, loss, reverse steps.

Notation (0-based step index t in [0, T), as in the schedule functions):

    betas[t]                         = beta_t
    alphas_cumprod[t]                = abar_t = prod_{s <= t} (1 - beta_s)
    alphas_cumprod_prev[t]           = abar_{t-1}, with abar_{-1} = 1
    sqrt_one_minus_alphas_cumprod[t] = sqrt(1 - abar_t)
    posterior_variance[t]            = beta_tilde_t = (1 - abar_{t-1}) / (1 - abar_t) * beta_t   (Ho et al. eq. 7)
    snr[t]                           = SNR_t = abar_t / (1 - abar_t)                             (Kingma et al. 2021)

With a zero-terminal-SNR schedule (abar_{T-1} = 0, Lin et al. 2024) every buffer stays finite: the only
denominator that vanishes there is sqrt(abar_t), used by epsilon prediction alone, which is refused.

Buffers are float64 and gathered per sample, then cast to the sample's dtype, so coefficient round-off does not
depend on the training precision. Subclasses choose the sampling trajectory (:meth:`timesteps`) and the update
(:meth:`step`); the :class:`~diffusion.sampling.sampler.Sampler` owns the loop.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.sampling.guidance import drop_labels
from diffusion.methods.schedules import Schedule
from diffusion.runtime.checks import ConfigError, check_choice, check_float, check_int

Timestep = torch.Tensor | int  # (B,) per-sample timesteps, or one int the whole batch shares (a sampling step)
Prediction = Literal["epsilon", "x0", "v"]
TimestepSpacing = Literal["leading", "trailing", "linspace"]
LossWeighting = Literal["uniform", "min_snr"]
PREDICTIONS: tuple[str, ...] = get_args(Prediction)
LOSS_WEIGHTINGS: tuple[str, ...] = get_args(LossWeighting)
SPACINGS: tuple[str, ...] = get_args(TimestepSpacing)


def extract(coefficients: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Gather ``coefficients[t]`` for a batch and shape it to broadcast against ``like``: (B,) -> (B, 1, ..., 1)."""
    values = coefficients.to(like.device)[t.to(like.device)]
    return values.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


class BaseMethod(nn.Module, ABC):
    """A discrete-time Gaussian diffusion with a noise schedule and a prediction target.

    Args:
        schedule: ``num_timesteps -> betas`` (see :mod:`diffusion.methods.schedules`).
        num_timesteps: T, the number of diffusion steps.
        prediction: what the network predicts: the noise ``epsilon``, the clean sample ``x0``, or the velocity
            ``v = sqrt(abar_t) * eps - sqrt(1 - abar_t) * x0`` (Salimans & Ho 2022, Sec. 4).
        clip_denoised: clamp the predicted x0 to [-1, 1] when sampling (right for images scaled to [-1, 1]).
        loss_weighting: ``uniform`` (Ho et al. eq. 14) or ``min_snr`` (Hang et al. 2023), see :meth:`loss_weights`.
        snr_gamma: the clip gamma of ``min_snr`` (5 in the paper).
        cond_drop_prob: probability of replacing a class label by the null label in training, so that one
            network learns both the conditional and the unconditional model (Ho & Salimans 2022, Alg. 1; 0.1 as
            in their experiments). Only class-conditional training uses it.

    Raises:
        ConfigError: for an unknown ``prediction`` or ``loss_weighting``, ``num_timesteps < 1``,
            ``snr_gamma <= 0``, ``cond_drop_prob`` outside [0, 1], or epsilon prediction with a zero-terminal-SNR
            schedule.
    """

    #: The method's config option (``method=<name>``), as eval.json and the step tables report it.
    name: ClassVar[str] = ""

    def __init__(
        self,
        schedule: Schedule,
        num_timesteps: int = 1000,
        prediction: Prediction = "epsilon",
        clip_denoised: bool = True,
        loss_weighting: LossWeighting = "uniform",
        snr_gamma: float = 5.0,
        cond_drop_prob: float = 0.1,
    ) -> None:
        super().__init__()
        self.num_timesteps = check_int(num_timesteps, "method.num_timesteps", minimum=1)
        self.prediction: Prediction = check_choice(prediction, "method.prediction", PREDICTIONS)
        self.clip_denoised = bool(clip_denoised)
        self.loss_weighting: LossWeighting = check_choice(loss_weighting, "method.loss_weighting", LOSS_WEIGHTINGS)
        self.snr_gamma = check_float(snr_gamma, "method.snr_gamma", minimum=0.0, inclusive=False)
        self.cond_drop_prob = check_float(cond_drop_prob, "method.cond_drop_prob", 0.0, 1.0)

        betas = schedule(self.num_timesteps).to(torch.float64)
        assert betas.shape == (self.num_timesteps,), f"schedule returned shape {tuple(betas.shape)}"
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        alphas_cumprod_prev = F.pad(alphas_cumprod[:-1], (1, 0), value=1.0)
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
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
        self._buffer("posterior_variance", posterior_variance)
        self._buffer("snr", alphas_cumprod / (1.0 - alphas_cumprod))
        # Posterior mean mu_tilde = coef1 * x0 + coef2 * x_t (Ho et al. eq. 7).
        self._buffer("posterior_mean_coef1", betas * alphas_cumprod_prev.sqrt() / (1.0 - alphas_cumprod))
        self._buffer(
            "posterior_mean_coef2", (1.0 - alphas_cumprod_prev) * (1.0 - betas).sqrt() / (1.0 - alphas_cumprod)
        )

        self._tables: dict[str, list[float]] = {}  # buffers as Python floats, filled by coefficient()

    def _buffer(self, name: str, value: torch.Tensor) -> None:
        # Not persistent: the schedule is rebuilt from the config, so checkpoints hold only learned state.
        self.register_buffer(name, value, persistent=False)

    def coefficient(self, name: str, t: Timestep, like: torch.Tensor) -> torch.Tensor | float:
        """Buffer ``name`` at ``t``: a float (float64) for an int ``t``, else :func:`extract`'s ``(B, 1, ...)``.

        Sampling steps share one t across the batch, and a float scales a tensor inside one kernel, whereas
        ``extract`` costs a gather, a cast and a reshape per coefficient: with a cheap network that was most
        of a sampling step (experiments/benchmark.py, row 5).
        """
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
        """Sample x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) (Ho et al. eq. 4); t is (B,) long."""
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

    def x0_from_output(
        self,
        x_t: torch.Tensor,
        sqrt_abar: torch.Tensor | float,
        sqrt_one_minus_abar: torch.Tensor | float,
        model_output: torch.Tensor,
    ) -> torch.Tensor:
        """x0 implied by the network output at the noise level (sqrt(abar), sqrt(1 - abar)), which need not be
        one of the schedule's (the sigma-space samplers evaluate between timesteps)."""
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
    # Training
    # ----------------------------------------------------------------------------------------------------
    def compute_loss(
        self,
        model: nn.Module,
        x0: torch.Tensor,
        *,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        **model_kwargs: Any,
    ) -> torch.Tensor:
        """Simple loss (Ho et al. eq. 14): MSE between the network output and the prediction target.

        ``t`` defaults to uniform over [0, T) and ``noise`` to standard normal, both drawn from the global RNG;
        validation passes fixed ones so that epochs compare. ``model_kwargs`` (e.g. class labels ``y``) go to
        the model. ``uniform`` weighting is the plain mean over all elements; ``min_snr`` averages each sample's
        squared error, weights it by :meth:`loss_weights` and averages over the batch.

        With class labels ``y`` and ``cond_drop_prob > 0``, labels are replaced by the null label (see
        :meth:`condition_kwargs`) while ``model.training`` is true, like ``nn.Dropout``: a validation pass in
        eval mode measures the conditional loss.
        """
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
        """Per-sample loss weights ``(B,)`` (float64) for timesteps ``t`` ``(B,)``.

        min-SNR-gamma (Hang et al. 2023) weights the loss *in x0 space* by min(SNR_t, gamma). The MSE of each
        target is a multiple of the x0 MSE: ||eps_hat - eps||^2 = SNR_t ||x0_hat - x0||^2 and
        ||v_hat - v||^2 = (SNR_t + 1) ||x0_hat - x0||^2, hence the weight on the target's own MSE:

            epsilon: min(SNR_t, gamma) / SNR_t     (= min(1, gamma / SNR_t), written so SNR_t = 0 gives 1)
            x0:      min(SNR_t, gamma)
            v:       min(SNR_t, gamma) / (SNR_t + 1)

        ``uniform`` gives ones.
        """
        snr = self.snr.to(t.device)[t]  # (B,)
        if self.loss_weighting == "uniform":
            return torch.ones_like(snr)
        if self.prediction == "epsilon":
            return (self.snr_gamma / snr).clamp(max=1.0)
        clipped = snr.clamp(max=self.snr_gamma)
        return clipped if self.prediction == "x0" else clipped / (snr + 1.0)

    def condition_kwargs(self, model: nn.Module, model_kwargs: dict[str, Any]) -> dict[str, Any]:
        """:func:`condition_kwargs` with this method's ``cond_drop_prob``."""
        return condition_kwargs(model, model_kwargs, self.cond_drop_prob)

    # ----------------------------------------------------------------------------------------------------
    # Reverse steps
    # ----------------------------------------------------------------------------------------------------
    def p_sample(
        self,
        x_t: torch.Tensor,
        t: Timestep,
        model_output: torch.Tensor,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Ancestral step x_t -> x_{t-1} ~ N(mu_tilde(x_t, x0_hat), beta_tilde_t I) (Ho et al. eqs. 6-7).

        ``t`` is ``(B,)`` or one int for the whole batch. No noise is added where ``t == 0``: the last step
        returns the posterior mean.
        """
        if isinstance(t, torch.Tensor):
            t = self._as_batch(t, x_t)
        x0 = self._denoised(x_t, t, model_output)
        coef1 = self.coefficient("posterior_mean_coef1", t, x_t)
        coef2 = self.coefficient("posterior_mean_coef2", t, x_t)
        mean = coef1 * x0 + coef2 * x_t  # mu_tilde (Ho et al. eq. 7)
        if noise is None:
            noise = torch.randn_like(x_t)
        std = self.coefficient("posterior_variance", t, x_t) ** 0.5  # sqrt(beta_tilde_t)
        if not isinstance(t, torch.Tensor):
            return mean + std * noise if t != 0 else mean
        nonzero = (t != 0).to(x_t.dtype).reshape(-1, *([1] * (x_t.dim() - 1)))
        return mean + nonzero * std * noise

    def ddim_step(
        self,
        x_t: torch.Tensor,
        t: Timestep,
        t_prev: Timestep,
        model_output: torch.Tensor,
        eta: float = 0.0,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Generalised step x_t -> x_{t_prev} (Song et al. 2021, eq. 12).

        x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z, with
        sigma = eta * sqrt((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)) (eq. 16); ``t_prev < 0``
        means abar_prev = 1 (the step to clean data). eta = 0 is deterministic DDIM; eta = 1 with
        ``t_prev = t - 1`` is DDPM's ancestral step. With ``clip_denoised``, x0_hat is clipped and eps_hat is
        re-derived from the clipped x0_hat, eps_hat = (x_t - sqrt(abar_t) x0_hat) / sqrt(1 - abar_t), so the
        two stay one consistent point of the trajectory (guided-diffusion's DDIM; diffusers'
        ``use_clipped_model_output=True``). Keeping the unclipped eps_hat instead makes deterministic DDIM get
        worse as steps increase (measured in experiments/sampling_steps). ``t`` and ``t_prev`` are ``(B,)``
        tensors or ints shared by the batch.
        """
        if isinstance(t, torch.Tensor):
            t = self._as_batch(t, x_t)
        abar_t = self.coefficient("alphas_cumprod", t, x_t)
        abar_prev = self._abar_prev(t_prev, x_t)
        x0 = self._denoised(x_t, t, model_output)
        if self.clip_denoised:
            eps = (x_t - self.coefficient("sqrt_alphas_cumprod", t, x_t) * x0) / self.coefficient(
                "sqrt_one_minus_alphas_cumprod", t, x_t
            )
        else:
            eps = self.predict_epsilon(x_t, t, model_output)
        sigma = eta * _sqrt_clamped((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev))
        x_prev = _sqrt_clamped(abar_prev) * x0 + _sqrt_clamped(1 - abar_prev - sigma**2) * eps
        if eta > 0:
            if noise is None:
                noise = torch.randn_like(x_t)
            x_prev = x_prev + sigma * noise
        return x_prev

    def _abar_prev(self, t_prev: Timestep, like: torch.Tensor) -> torch.Tensor | float:
        """abar at ``t_prev``, with abar = 1 where ``t_prev < 0`` (before the first diffusion step)."""
        if not isinstance(t_prev, torch.Tensor):
            return self.coefficient("alphas_cumprod", t_prev, like) if t_prev >= 0 else 1.0
        t_prev = self._as_batch(t_prev, like)
        alphas_cumprod = self.alphas_cumprod.to(like.device)
        abar_prev = torch.where(t_prev >= 0, alphas_cumprod[t_prev.clamp(min=0)], alphas_cumprod.new_ones(()))
        return abar_prev.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))

    @staticmethod
    def _as_batch(t: torch.Tensor | int, x: torch.Tensor) -> torch.Tensor:
        """An int or 0-d tensor becomes a (B,) LongTensor on x's device."""
        t = torch.as_tensor(t, device=x.device, dtype=torch.long)
        return t.expand(x.shape[0]) if t.dim() == 0 else t

    # ----------------------------------------------------------------------------------------------------
    # Sampling strategy (what DDPM and DDIM differ in)
    # ----------------------------------------------------------------------------------------------------
    def timestep_pairs(
        self, steps: int | None, spacing: TimestepSpacing = "leading"
    ) -> list[tuple[int, int]]:
        """``(t, t_prev)`` for every step of the trajectory, from noise to data; the last ``t_prev`` is -1.

        t_prev always comes from the actual sequence, never from ``t - T // steps``.
        """
        sequence = self.timesteps(steps, spacing)
        return list(zip(sequence, sequence[1:] + [-1]))

    @abstractmethod
    def timesteps(self, steps: int | None, spacing: TimestepSpacing = "leading") -> list[int]:
        """Descending timesteps the sampler visits."""

    @abstractmethod
    def step(
        self,
        x_t: torch.Tensor,
        t: int,
        t_prev: int,
        model_output: torch.Tensor,
        *,
        eta: float = 0.0,
        noise: torch.Tensor | None = None,
        state: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        """One reverse update x_t -> x_{t_prev}.

        ``state`` is a dict the sampler creates empty for each trajectory (each batch) and passes to every
        step, for multistep solvers that reuse earlier model outputs; single-step methods ignore it.
        """

    def nfe(self, steps: int | None, spacing: TimestepSpacing = "leading") -> int:
        """Network evaluations per sample for ``steps`` (one per visited timestep; a guided one counted once)."""
        return len(self.timesteps(steps, spacing))

    def needs_noise(self, eta: float) -> bool:
        """Whether :meth:`step` consumes fresh noise (the sampler skips drawing it otherwise)."""
        return True

    def extra_repr(self) -> str:
        return (
            f"num_timesteps={self.num_timesteps}, prediction={self.prediction!r}, clip={self.clip_denoised}, "
            f"loss_weighting={self.loss_weighting!r}, cond_drop_prob={self.cond_drop_prob}"
        )


def condition_kwargs(model: nn.Module, model_kwargs: dict[str, Any], cond_drop_prob: float) -> dict[str, Any]:
    """The keyword arguments for the network, with class labels dropped for classifier-free guidance.

    A ``null_label`` entry is taken out (it is not for the network); without it the null label is the
    network's ``num_classes`` (the label table's extra row, :class:`~diffusion.models.embeddings.TimeEmbedding`),
    looked up through a DistributedDataParallel or compile wrapper. Labels are dropped only with
    ``cond_drop_prob > 0`` and ``model.training``.

    Raises:
        ValueError: if labels must be dropped and neither ``null_label`` nor ``model.num_classes`` is known.
    """
    kwargs = dict(model_kwargs)
    null_label = kwargs.pop("null_label", None)
    y = kwargs.get("y")
    if y is None or cond_drop_prob == 0 or not getattr(model, "training", True):
        return kwargs
    if null_label is None:
        null_label = getattr(model, "num_classes", getattr(getattr(model, "module", None), "num_classes", None))
    if null_label is None:
        raise ValueError("method.cond_drop_prob > 0 needs the null label: pass null_label= to compute_loss or "
                         "give the model a num_classes attribute")
    kwargs["y"] = drop_labels(y, cond_drop_prob, int(null_label))
    return kwargs


def _sqrt_clamped(value: torch.Tensor | float) -> torch.Tensor | float:
    """sqrt(max(value, 0)) of a tensor or a float (round-off can make a variance slightly negative)."""
    if isinstance(value, torch.Tensor):
        return value.clamp(min=0).sqrt()
    return math.sqrt(max(value, 0.0))


def spaced_timesteps(num_timesteps: int, steps: int, spacing: TimestepSpacing) -> list[int]:
    """A descending subsequence of [0, T) with ``steps`` entries (Lin et al. 2024, Table 2 spacings).

    ``leading``: 0, k, 2k, ... with k = T // steps (never reaches T - 1);
    ``trailing``: round(T - i * T / steps) - 1, so it always starts at T - 1;
    ``linspace``: round(linspace(0, T - 1, steps)).
    """
    check_int(steps, "sampler.steps", minimum=1, maximum=num_timesteps)
    check_choice(spacing, "sampler.timestep_spacing", SPACINGS)
    if spacing == "leading":
        ratio = num_timesteps // steps
        sequence = [i * ratio for i in range(steps)]
    elif spacing == "trailing":
        ratio = num_timesteps / steps
        sequence = [round(num_timesteps - i * ratio) - 1 for i in range(steps)][::-1]
    else:
        sequence = torch.linspace(0, num_timesteps - 1, steps, dtype=torch.float64).round().long().tolist()
    return sorted(set(sequence), reverse=True)

"""What every trained formulation offers: a training loss, the forward process, and the denoiser any solver steps.

Solvers work in sigma space, x = y + sigma n (Karras et al. 2022, eq. 1), and ask a method only for
D(x; sigma), its estimate of y (:meth:`BaseMethod.denoise`); it lists its ``grids``, ``solvers`` and
``default_solver``. At sigma = inf a sample holds its unit noise n = lim x / sigma (:func:`noise_estimate`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from diffusion.runtime.checks import ConfigError, check_float

Network = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_in (B, ...), t (B,) float) -> output (B, ...)
# The discrete schedule's own levels, Karras et al.'s rho-spaced sigmas, or a flow's times t in [0, 1] (its solvers
# step the velocity u(x_t, t) rather than D(x; sigma)).
GridKind = Literal["schedule", "karras", "time"]


class BaseMethod(nn.Module, ABC):
    """A trained formulation. Subclasses set ``name``, ``default_solver``, ``solvers``, ``grids``, ``sigma_min``,
    ``sigma_max``, ``num_timesteps`` and ``cond_drop_prob``, and define the abstract methods."""

    #: The method's config option, as eval.json and the step tables report it.
    name: ClassVar[str] = ""
    #: Solvers (``sampler.solver``) that make sense for this method, and the grids it offers them.
    solvers: ClassVar[tuple[str, ...]] = ()
    grids: ClassVar[tuple[GridKind, ...]] = ("karras",)
    #: The spacing of its ``schedule`` grid whatever ``sampler.timestep_spacing`` says (a student's own grid).
    timestep_spacing: ClassVar[str | None] = None
    default_solver: str
    sigma_min: float
    sigma_max: float
    num_timesteps: int
    cond_drop_prob: float = 0.0
    #: What the network's output means (epsilon, x0, v, EDM's preconditioned F): a guide model must match it.
    prediction: str

    @abstractmethod
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """A noisy sample of ``x0`` ``(B, ...)`` at the per-sample noise levels ``t`` ``(B,)``."""

    @abstractmethod
    def compute_loss(self, model: nn.Module, x0: torch.Tensor, *, t: torch.Tensor | None = None,
                     noise: torch.Tensor | None = None, **model_kwargs: Any) -> torch.Tensor:
        """The training loss of ``model`` on the batch ``x0``; ``t`` and ``noise`` default to random draws
        (validation passes fixed ones), ``model_kwargs`` (class labels ``y``) go to the model."""

    @abstractmethod
    def denoise(self, network: Network, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """D(x; sigma): the clean-sample estimate for the sigma-space sample ``x`` ``(B, ...)``."""

    def schedule_sigmas(self) -> torch.Tensor:
        """The discrete levels ``(T,)`` float64, ascending, of the ``schedule`` grid (only where it is offered)."""
        raise NotImplementedError(f"{type(self).__name__} has no discrete schedule")

    def sampling_times(self, steps: int) -> list[float]:
        """``steps + 1`` ascending times of the ``time`` grid (only where it is offered: a flow)."""
        raise NotImplementedError(f"{type(self).__name__} has no time grid")

    def velocity(self, network: Network, x_t: torch.Tensor, t: float) -> torch.Tensor:
        """The velocity u(x_t, t) ``(B, ...)`` the ``time`` grid's solvers integrate (only where it is offered)."""
        raise NotImplementedError(f"{type(self).__name__} has no velocity field")

    def average_velocity(self, network: Network, x: torch.Tensor, start: float, end: float) -> torch.Tensor:
        """The average velocity u(x, start, end) ``(B, ...)`` of a one-step generator's ``time`` grid, x_end = x +
        (end - start) u (only where it is offered: MeanFlow)."""
        raise NotImplementedError(f"{type(self).__name__} has no average velocity")

    def path_coefficients(self, t: torch.Tensor | float) -> tuple[torch.Tensor, ...]:
        """(alpha_t, sigma_t, d_alpha_t, d_sigma_t) of x_t = alpha_t y + sigma_t n (only with a ``time`` grid)."""
        raise NotImplementedError(f"{type(self).__name__} has no affine path")

    def default_steps(self, solver: str) -> int | None:
        """``sampler.steps=null``: None takes the solver's own default; a distilled student returns its steps."""
        return None

    def check_solver(self, solver: str) -> str:
        """``solver`` if this method can be sampled with it. Raises: ConfigError naming ``sampler.solver``."""
        if solver not in self.solvers:
            raise ConfigError(f"sampler.solver={solver} does not fit method {self.name}: it samples only with its "
                              f"own method's solvers ({', '.join(self.solvers)}); choose one of those or null")
        return solver

    def sampler_name(self, solver: str) -> str:
        """How eval.json names sampling with ``solver``: the method's name with its default solver."""
        return self.name if solver == self.default_solver else f"{self.name}_{solver}"

    def check_network(self, network: nn.Module) -> None:
        """Refuse a network that lacks what this method needs beyond ``f(x, t, y)``; called when a run is built.

        Raises:
            ConfigError: naming the ``method.*`` key that asks for it.
        """

    def condition_kwargs(self, model: nn.Module, model_kwargs: dict[str, Any]) -> dict[str, Any]:
        """:func:`condition_kwargs` with this method's ``cond_drop_prob``."""
        return condition_kwargs(model, model_kwargs, self.cond_drop_prob)


def broadcast(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-sample ``values`` ``(B,)`` as ``(B, 1, ..., 1)`` in ``like``'s dtype, to scale ``like`` ``(B, ...)``."""
    return values.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def kwargs_rows(kwargs: dict[str, Any], rows: slice | torch.Tensor) -> dict[str, Any]:
    """The per-sample keyword arguments (class labels) of ``rows`` (a slice, an index or a boolean mask)."""
    return {name: value[rows] if isinstance(value, torch.Tensor) else value for name, value in kwargs.items()}


def extract(coefficients: torch.Tensor, t: torch.Tensor, like: torch.Tensor, clean: float | None = None
            ) -> torch.Tensor:
    """``coefficients[t]`` for a batch ``t`` ``(B,)``, broadcast against ``like``; with ``clean``, t = -1 (the
    clean data, before the first diffusion step) gives ``clean`` (abar_{-1} = 1)."""
    t = t.to(like.device)
    values = coefficients.to(like.device)[t.clamp(min=0) if clean is not None else t]
    if clean is not None:
        values = torch.where(t >= 0, values, torch.full_like(values, clean))
    return broadcast(values, like)


def noise_estimate(x: torch.Tensor, denoised: torch.Tensor, sigma: float) -> torch.Tensor:
    """(x - D) / sigma, the noise in x (dx/dsigma of the probability-flow ODE, EDM eq. 3); at sigma = inf x holds it."""
    return x if math.isinf(sigma) else (x - denoised) / sigma


def vp_scale(sigma: float) -> float:
    """1 / sqrt(1 + sigma^2): sigma-space x to the variance-preserving x_t = sqrt(abar) x (1 at sigma = inf, where x
    holds its unit noise)."""
    return 1.0 if math.isinf(sigma) else 1 / math.sqrt(1 + sigma**2)


def condition_kwargs(model: nn.Module, model_kwargs: dict[str, Any], cond_drop_prob: float) -> dict[str, Any]:
    """The network's keyword arguments, class labels dropped for classifier-free guidance while ``model.training``;
    the null label is a ``null_label`` entry (taken out) or the (unwrapped) network's ``num_classes``.

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


def drop_labels(
    y: torch.Tensor, drop_prob: float, null_label: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Each label ``(B,)`` replaced by ``null_label`` with probability ``drop_prob`` (Ho & Salimans 2022, Alg. 1,
    p_uncond); a new tensor. ``generator`` draws the mask (the global RNG of ``y``'s device if None).

    Raises:
        ConfigError: ``drop_prob`` outside [0, 1]. ValueError: ``y`` is not an integer tensor.
    """
    drop_prob = check_float(drop_prob, "method.cond_drop_prob", 0.0, 1.0)
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise ValueError(f"drop_labels needs integer class labels, got dtype {y.dtype}")
    if drop_prob == 0.0:
        return y.clone()
    device = y.device if generator is None else generator.device
    drop = torch.rand(y.shape, generator=generator, device=device).to(y.device) < drop_prob  # (B,) bool
    return torch.where(drop, torch.full_like(y, null_label), y)

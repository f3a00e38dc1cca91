"""Easy consistency tuning (Geng et al. 2024, "Consistency Models Made Easy", ECT): a trained EDM run tuned into a
consistency model by the consistency condition at a gap Delta t = t - r that shrinks as training goes on, starting
from the diffusion loss itself.

Notation (paper -> code; EDM's sigma space, the paper's t is sigma):

    f(x_t, t)  = D(x_t; t), EDM's preconditioned network (eq. 7): c_skip(0) = 1 and c_out(0) = 0 are the boundary
               condition, so the tuned network starts as the teacher's denoiser (paper Sec. 3, "diffusion
               pretraining is a special case of consistency training at Delta t = t")
    t          ln t ~ N(P_mean, P_std^2)
    r          = max(0, t (1 - n(t) / q^(s + 1))), n(t) = 1 + k sigmoid(-b t): the mapping function p(r | t) of
               the paper (Sec. 3.2) with the stage s = floor(stages * step / total_steps), so Delta t / t shrinks
               q-fold at every stage (the "dt -> 0" schedule); at r = 0 the target is the data itself
    loss       w(t) d(f(x_t, t), sg(f(x_r, r))), x_t = y + t n, x_r = y + r n with the same n and the same
               dropout mask; d(a, b) = sqrt(||a - b||^2 + c^2) - c (c = 0: the L2 norm, the paper's adaptive
               weighting with p = 1/2); w = 1 / (t - r) (``weighting=gap``, the paper's and its official code's) or
               1 / c_out(t)^2 = (t^2 + sigma_d^2) / (t sigma_d)^2 (``weighting=edm``, EDM's loss weight)
    sampling   the ``consistency`` solver: 1 step from sigma_max, 2 steps through sigma_mid (the paper's 0.821)

Sampling walks the two-level grid {sigma_max, sigma_mid}: its first level starts at x = sqrt(1 + sigma_max^2) n,
the schedule grids' convention, within 1e-4 of EDM's sigma_max n at sigma_max = 80.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from diffusion.methods.base import GridKind, broadcast
from diffusion.methods.edm import EDM
from diffusion.methods.meanflow import bare_network
from diffusion.runtime.checks import check_choice, check_float, check_int


class ConsistencyTuning(EDM):
    """An EDM network tuned into a consistency model (``task=tune``: the method a tuned run is saved and sampled
    with). Its EDM settings are the teacher run's; the ECT ones come from ``tune.*``. Settings: see the ``tune``
    block of conf/config.yaml.

    Raises:
        ConfigError: naming the key of an invalid argument.
    """

    name = "ect"
    solvers: ClassVar[tuple[str, ...]] = ("consistency",)
    grids: ClassVar[tuple[GridKind, ...]] = ("schedule",)
    timestep_spacing: ClassVar[str | None] = "trailing"  # 1 step: sigma_max; 2 steps: sigma_max, sigma_mid

    def __init__(self, total_steps: int = 1000, stages: int = 4, q: float = 4.0, k: float = 8.0, b: float = 1.0,
                 huber_c: float = 0.0, weighting: str = "edm", sigma_mid: float = 0.821, p_mean: float = -1.1,
                 p_std: float = 2.0, default_solver: str = "consistency", **edm: Any) -> None:
        super().__init__(p_mean=p_mean, p_std=p_std, default_solver=default_solver, **edm)
        self.total_steps = check_int(total_steps, "tune.steps", minimum=1)
        self.stages = check_int(stages, "tune.stages", minimum=1)
        self.q = check_float(q, "tune.q", minimum=1.0, inclusive=False)
        self.k = check_float(k, "tune.k", minimum=0.0)
        self.b = check_float(b, "tune.b", minimum=0.0)
        self.huber_c = check_float(huber_c, "tune.huber_c", minimum=0.0)
        # tune.weighting's default is gap; edm here keeps runs saved before the key existed as they were
        self.weighting = check_choice(weighting, "tune.weighting", ("gap", "edm"))
        self.sigma_mid = check_float(sigma_mid, "tune.sigma_mid", 0.0, self.sigma_max, inclusive=False)
        self._step_count: Callable[[], int] = lambda: 0

    def follow_steps(self, step_count: Callable[[], int]) -> None:
        """Read the optimizer step from ``step_count``: the stage of the Delta t schedule follows it."""
        self._step_count = step_count

    def schedule_sigmas(self) -> torch.Tensor:
        return torch.tensor([self.sigma_mid, self.sigma_max], dtype=torch.float64)

    def default_steps(self, solver: str) -> int | None:
        return 1

    # ----------------------------------------------------------------------------------------------------
    # Training
    # ----------------------------------------------------------------------------------------------------
    def stage(self) -> int:
        """s = floor(stages * step / total_steps), at most stages - 1."""
        return min(self.stages - 1, self.stages * self._step_count() // self.total_steps)

    def shrunk_sigmas(self, sigma: torch.Tensor) -> torch.Tensor:
        """r = max(0, t (1 - n(t) / q^(s + 1))), n(t) = 1 + k sigmoid(-b t): the mapping function, same shape."""
        n = 1 + self.k * torch.sigmoid(-self.b * sigma)
        return (sigma * (1 - n / self.q ** (self.stage() + 1))).clamp(min=0.0)

    def compute_loss(self, model: nn.Module, x0: torch.Tensor, *, t: torch.Tensor | None = None,
                     noise: torch.Tensor | None = None, **model_kwargs: Any) -> torch.Tensor:
        """The ECT loss (module docstring), averaged over the batch; ``t`` as :meth:`EDM.compute_loss`'s."""
        sigma = self.training_sigmas(t, x0.shape[0], x0.device)  # (B,) float64
        noise = torch.randn_like(x0) if noise is None else noise
        kwargs = self.condition_kwargs(model, model_kwargs)
        devices = [x0.device] if x0.device.type == "cuda" else []
        r = self.shrunk_sigmas(sigma)
        with torch.random.fork_rng(devices=devices):  # the prediction below redraws the same dropout masks
            target = self.target(model, x0, noise, r, kwargs)
        prediction = self.precondition(lambda x_in, c_noise: model(x_in, c_noise, **kwargs),
                                       self.q_sample(x0, sigma, noise), sigma).float()
        distance = (prediction - target).flatten(1).pow(2).sum(dim=1)  # (B,)
        distance = (distance + self.huber_c**2).sqrt() - self.huber_c
        weight = 1 / (sigma - r) if self.weighting == "gap" else self.loss_weights(sigma)  # r < t: n(t) / q^s > 0
        return (weight.float() * distance).mean()

    @torch.no_grad()
    def target(self, model: nn.Module, x0: torch.Tensor, noise: torch.Tensor, r: torch.Tensor,
               kwargs: dict[str, Any]) -> torch.Tensor:
        """sg(f(x_r, r)) ``(B, ...)`` float32 on the network inside any DDP wrapper; y itself where r = 0."""
        network = bare_network(model)
        positive = r > 0
        safe = torch.where(positive, r, torch.ones_like(r))  # ln(0) would make c_noise infinite
        denoised = self.precondition(lambda x_in, c_noise: network(x_in, c_noise, **kwargs),
                                     self.q_sample(x0, safe, noise), safe).float()
        return torch.where(broadcast(positive, denoised) > 0, denoised, x0.float())

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, total_steps={self.total_steps}, stages={self.stages}, q={self.q}, "
                f"k={self.k}, b={self.b}, huber_c={self.huber_c}, weighting={self.weighting!r}, "
                f"sigma_mid={self.sigma_mid}")


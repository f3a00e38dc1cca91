"""Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models", EDM2,
Sec. 3 and App. C): track two power-function EMAs while training, save snapshots of them, and after training
reconstruct the EMA of any other length as a least-squares combination of the snapshots.

Notation map (paper -> code):

    gamma             exponent of the power-function profile p_gamma(tau) = (gamma + 1) tau^gamma / t^(gamma + 1)
    sigma_rel         ``std``: the profile's standard deviation relative to its length t (eq. 3),
                      sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3)))
    beta_t            (1 - 1/t)^(gamma + 1), the EMA decay at step t (eq. 2): theta_hat_t = beta_t theta_hat_{t-1}
                      + (1 - beta_t) theta_t; it gives theta_k the weight int_{k-1}^{k} p_gamma, so the discrete
                      EMA is exactly the profile applied to the piecewise-constant training trajectory
    <p_a, p_b>        ``profile_inner_product``: int_0^inf p_a(tau) p_b(tau) d tau (both 0 past their t)
    x                 the snapshots' coefficients, solving min_x || p_target - sum_i x_i p_i ||^2 (App. C.2):
                      A x = b with A_ij = <p_i, p_j>, b_i = <p_i, p_target>

Unlike ``ema-pytorch``'s ``PostHocEMA``, this class is state only (``update`` / ``state_dict`` / ``snapshot``) and
:func:`reconstruct` a pure function of snapshots, so one module owns the checkpoint files and a resumed run continues
the averages bit for bit.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from diffusion.runtime.checks import ConfigError, check_float

Snapshot = dict[str, Any]  # {"step": int, "stds": [float], "averages": [state_dict]}, as :meth:`PosthocEMA.snapshot`


def std_to_gamma(std: float) -> float:
    """Invert eq. 3: sigma_rel^2 (gamma + 2)^2 (gamma + 3) = gamma + 1 is the cubic
    gamma^3 + 7 gamma^2 + (16 - s) gamma + (12 - s) = 0 with s = sigma_rel^-2; its largest real root.

    Raises:
        ConfigError: for ``std`` outside (0, 0.28) (gamma > 0 needs sigma_rel < sqrt(1/12) ~ 0.289).
    """
    check_float(std, "ema.std", 0.0, 0.28, inclusive=False)
    s = std**-2
    return float(np.roots([1.0, 7.0, 16.0 - s, 12.0 - s]).real.max())


def gamma_to_std(gamma: float) -> float:
    """sigma_rel of a power-function profile with exponent gamma (eq. 3)."""
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def profile_inner_product(t_a: np.ndarray, gamma_a: np.ndarray, t_b: np.ndarray, gamma_b: np.ndarray) -> np.ndarray:
    """<p_a, p_b> = (gamma_a + 1)(gamma_b + 1) / (gamma_a + gamma_b + 1) * min(t)^(gamma_a + gamma_b + 1)
    / (t_a^(gamma_a + 1) t_b^(gamma_b + 1)), written with the ratio min(t) / max(t) <= 1 so no power overflows.
    Broadcasts over its arguments (float64)."""
    ratio = np.minimum(t_a, t_b) / np.maximum(t_a, t_b)
    exponent = np.where(t_a < t_b, gamma_b, gamma_a)  # the shorter profile's t only enters through the ratio
    numerator = (gamma_a + 1) * (gamma_b + 1) * ratio**exponent
    return numerator / ((gamma_a + gamma_b + 1) * np.maximum(t_a, t_b))


class PosthocEMA(nn.Module):
    """Power-function EMAs of ``model``'s weights, one per sigma_rel in ``stds`` (EDM2 Sec. 3; each in (0, 0.28)).
    ``shadow`` is the last one, used during training; buffers are copied, not averaged.

    Raises:
        ConfigError: for an empty ``stds`` or a std outside (0, 0.28), naming ``trainer.ema_stds``.
    """

    def __init__(self, model: nn.Module, stds: Sequence[float] = (0.05, 0.10)) -> None:
        super().__init__()
        if len(stds) == 0:
            raise ConfigError("trainer.ema_stds must list at least one relative std, e.g. [0.05, 0.10]")
        self.stds = [check_float(s, "trainer.ema_stds", 0.0, 0.28, inclusive=False) for s in stds]
        self.gammas = [std_to_gamma(s) for s in self.stds]
        self.averages = nn.ModuleList(copy.deepcopy(model).eval().requires_grad_(False) for _ in self.stds)
        self.num_updates = 0

    @property
    def shadow(self) -> nn.Module:
        return self.averages[-1]

    @torch.no_grad()
    def update(self, model: nn.Module, step: int | None = None) -> None:
        """Fold in the weights after optimizer step ``step`` (1-based; default: one more than the last update).
        Step 1 copies the weights (beta_1 = 0)."""
        t = self.num_updates + 1 if step is None else int(step)
        assert t >= 1, f"post-hoc EMA steps are 1-based, got {t}"
        weights = [p.detach() for p in model.parameters()]
        for gamma, average in zip(self.gammas, self.averages):
            beta = (1 - 1 / t) ** (gamma + 1)  # eq. 2
            torch._foreach_lerp_(list(average.parameters()), weights, 1.0 - beta)
            for average_buffer, buffer in zip(average.buffers(), model.buffers()):
                average_buffer.copy_(buffer)
        self.num_updates = t

    def snapshot(self) -> Snapshot:
        """What to save every N steps: the step and a CPU copy of each average (for :func:`reconstruct`)."""
        averages = [{k: v.detach().cpu().clone() for k, v in a.state_dict().items()} for a in self.averages]
        return {"step": self.num_updates, "stds": list(self.stds), "averages": averages}

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        """``averages`` per std, and the last under ``shadow`` as :class:`~diffusion.training.ema.EMA` stores it."""
        averages = [a.state_dict() for a in self.averages]
        return {"shadow": averages[-1], "averages": averages, "stds": list(self.stds),
                "num_updates": self.num_updates}

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:  # type: ignore[override]
        """Restore the averages; refuses a state tracked for other stds (resuming would mix profiles).

        Raises:
            ConfigError: if the checkpoint's stds differ from ``trainer.ema_stds``.
        """
        if [float(s) for s in state["stds"]] != self.stds:
            raise ConfigError(f"trainer.ema_stds={self.stds} differs from the checkpoint's {state['stds']}; "
                              "resume with the same stds")
        for average, weights in zip(self.averages, state["averages"]):
            average.load_state_dict(weights, strict=strict)
        self.num_updates = int(state["num_updates"])


def reconstruct(
    snapshots: Sequence[Snapshot], std_targets: Sequence[float], step: int | None = None
) -> list[dict[str, torch.Tensor]]:
    """The weights of the power-function EMA with each sigma_rel in ``std_targets`` at ``step`` (default: the last
    snapshot's), as the least-squares combination of every snapshot average (EDM2 App. C.2, Alg. 3); one state
    dict per target.

    Raises:
        ConfigError: for no snapshots or a target std outside (0, 0.28) (``ema.std``).
    """
    if not snapshots:
        raise ConfigError("post-hoc EMA needs at least one snapshot (trainer.ema_snapshot_every)")
    t_in = np.array([float(s["step"]) for s in snapshots for _ in s["stds"]])  # (K,)
    gamma_in = np.array([std_to_gamma(std) for s in snapshots for std in s["stds"]])  # (K,)
    states = [state for s in snapshots for state in s["averages"]]
    t_out = float(step if step is not None else max(s["step"] for s in snapshots))
    gamma_out = np.array([std_to_gamma(std) for std in std_targets])  # (R,)
    A = profile_inner_product(t_in[:, None], gamma_in[:, None], t_in[None, :], gamma_in[None, :])  # (K, K)
    b = profile_inner_product(t_in[:, None], gamma_in[:, None], t_out, gamma_out[None, :])  # (K, R)
    x = np.linalg.lstsq(A, b, rcond=None)[0]  # (K, R)
    return [_combine(states, x[:, r]) for r in range(len(std_targets))]


def _combine(states: Sequence[dict[str, torch.Tensor]], coefficients: np.ndarray) -> dict[str, torch.Tensor]:
    """sum_i x_i states_i for floating tensors; others (integer buffers) taken from the last state."""
    combined = {}
    for key, last in states[-1].items():
        if not last.is_floating_point():
            combined[key] = last.clone()
            continue
        total = sum(float(c) * state[key].double() for c, state in zip(coefficients, states))
        combined[key] = total.to(last.dtype)
    return combined

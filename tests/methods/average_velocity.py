"""The exact average velocity of Gaussian data on the linear path, the closed form the one-step flows' tests
(MeanFlow, shortcut models) check against."""

from __future__ import annotations

import torch
from torch import nn

MU, STD, T = 0.7, 0.4, 1000  # data y ~ N(MU, STD^2) per coordinate; the network's time scale


def moments(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of x_t = t y + (1 - t) n."""
    return t * MU, torch.sqrt(t**2 * STD**2 + (1 - t) ** 2)


class ExactAverage(nn.Module):
    """u*(x, a, b) = (phi_b(x) - x) / (b - a) with the flow map phi_b(x) = m_b + s_b / s_a (x - m_a) of Gaussian
    marginals (1-D per coordinate: the monotone map, which the ODE of an affine velocity field is); at b = a its
    limit, the marginal velocity v*(x, a) = m'_a + s'_a / s_a (x - m_a)."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # a parameter, so it is a trainable module

    def forward(self, x: torch.Tensor, t: torch.Tensor, interval: torch.Tensor | None = None,
                y: torch.Tensor | None = None) -> torch.Tensor:
        a = (t / T).double().reshape(-1, *([1] * (x.dim() - 1)))
        h = torch.zeros_like(a) if interval is None else (interval / T).double().reshape(a.shape)
        m_a, s_a = moments(a)
        standard = (x.double() - m_a) / s_a
        m_b, s_b = moments(a + h)
        safe = torch.where(h > 0, h, torch.ones_like(h))
        average = (m_b + s_b * standard - x.double()) / safe
        d_mean, d_std = MU, (a * STD**2 - (1 - a)) / s_a  # m'_a, s'_a
        return torch.where(h > 0, average, d_mean + d_std * standard).to(x.dtype) + 0 * self.anchor

"""Conditioning embeddings shared by every denoising network: the timestep and, optionally, the class label.

One home for the sinusoid and the classifier-free-guidance "null label". A one-step generator's network also
embeds its interval length (MeanFlow's t - r, Geng et al. 2025, Sec. 4.3; a shortcut model's step d, Frans et al.
2024) via :class:`IntervalEmbedding` when built with ``two_times=True``; without it no parameters are added.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.runtime.checks import check_bool


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of timesteps ``t`` ``(B,)`` (Vaswani et al. 2017, Sec. 3.5; DDPM); fractional t is fine.

    Returns ``(B, dim)`` float32 ``[cos(t f_0) .. cos(t f_{k-1}), sin(t f_0) .. sin(t f_{k-1})]``, ``k = dim // 2``,
    ``f_i = max_period ** (-i / k)``; an odd ``dim`` gets a zero last column.

    Raises:
        ValueError: if ``t`` is not one-dimensional or ``dim < 2``.
    """
    if t.ndim != 1:
        raise ValueError(f"timestep_embedding expects t of shape (B,), got {tuple(t.shape)}")
    if dim < 2:
        raise ValueError(f"timestep_embedding needs dim >= 2, got {dim}")
    half = dim // 2
    # Kept in float32 even under autocast: bf16 has 8 mantissa bits, so t * f for t ~ 1000 would lose the phase.
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)  # (B, 2 * half)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimeEmbedding(nn.Module):
    """Timestep (plus optional class) -> conditioning vector: sinusoid -> Linear -> SiLU -> Linear.

    With ``num_classes > 0`` a learned class embedding is added (ADM, Dhariwal & Nichol 2021); its extra row
    ``num_classes`` (:attr:`null_label`, also ``y=None``) is the unconditional token classifier-free guidance
    (Ho & Salimans 2022) trains by dropping labels.
    """

    def __init__(self, sinusoid_dim: int, out_dim: int, num_classes: int = 0, two_times: bool = False) -> None:
        super().__init__()
        self.sinusoid_dim = sinusoid_dim
        self.num_classes = num_classes
        self.mlp = nn.Sequential(nn.Linear(sinusoid_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))
        self.class_embed = nn.Embedding(num_classes + 1, out_dim) if num_classes > 0 else None
        self.interval_embed = IntervalEmbedding.build(two_times, sinusoid_dim, out_dim)

    @property
    def null_label(self) -> int:
        """The label index meaning "unconditional" (only meaningful when ``num_classes > 0``)."""
        return self.num_classes

    def forward(self, t: torch.Tensor, y: torch.Tensor | None = None,
                interval: torch.Tensor | None = None) -> torch.Tensor:
        """Embed ``t`` ``(B,)``, labels ``y`` ``(B,)`` (long, in ``[0, num_classes]``) and, for a two-time network,
        the ``interval`` ``(B,)`` (:class:`IntervalEmbedding`) into ``(B, out_dim)``.

        Raises:
            ValueError: if labels are given to a model built with ``num_classes=0``, or ``y`` is not ``(B,)``; an
                interval given to a one-time network.
        """
        emb = add_interval(self.mlp(timestep_embedding(t, self.sinusoid_dim)), self.interval_embed, t, interval)
        if self.class_embed is None:
            if y is not None:
                raise ValueError("class labels y were given to a model built with num_classes=0; pass y=None "
                                 "or set model.num_classes to the data set's number of classes")
            return emb
        if y is None:
            y = torch.full_like(t, self.null_label, dtype=torch.long)
        elif y.shape != t.shape:
            raise ValueError(f"class labels y must have shape {tuple(t.shape)} like t, got {tuple(y.shape)}")
        return emb + self.class_embed(y)  # (B, out_dim)


class IntervalEmbedding(nn.Module):
    """The interval length h ``(B,)`` of a two-time network, embedded as t is and added to the time embedding; h = 0
    (or ``interval=None``) gives the instantaneous velocity u(z, t, t) = v(z, t) (MeanFlow eq. 6 at r = t).
    """

    def __init__(self, sinusoid_dim: int, out_dim: int) -> None:
        super().__init__()
        self.sinusoid_dim = sinusoid_dim
        self.mlp = nn.Sequential(nn.Linear(sinusoid_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    @staticmethod
    def build(two_times: bool, sinusoid_dim: int, out_dim: int) -> IntervalEmbedding | None:
        """The embedding for a network built with ``model.two_times=true``; None (no parameters) otherwise."""
        two_times = check_bool(two_times, "model.two_times")
        return IntervalEmbedding(sinusoid_dim, out_dim) if two_times else None

    def forward(self, t: torch.Tensor, interval: torch.Tensor | None) -> torch.Tensor:
        """``(B, out_dim)`` for the intervals ``(B,)`` (zeros where None) of the times ``t`` ``(B,)``."""
        interval = torch.zeros_like(t, dtype=torch.float32) if interval is None else interval
        return self.mlp(timestep_embedding(interval, self.sinusoid_dim))


def add_interval(emb: torch.Tensor, interval_embed: IntervalEmbedding | None, t: torch.Tensor,
                 interval: torch.Tensor | None) -> torch.Tensor:
    """``emb`` ``(B, D)`` plus the interval's embedding on a two-time network; ``emb`` itself on a one-time one.

    Raises:
        ValueError: an ``interval`` given to a network built without ``two_times``.
    """
    if interval_embed is None:
        if interval is not None:
            raise ValueError("an interval (a second time) was given to a network built with model.two_times=false; "
                             "set model.two_times=true")
        return emb
    return emb + interval_embed(t, interval).to(emb.dtype)

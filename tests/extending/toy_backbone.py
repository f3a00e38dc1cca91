"""A backbone written outside the package, as a newcomer adds one: a module with a network taking
``(x_t, t, y)`` whose constructor asks for ``in_channels`` (the build fills it from the data's shape)."""

from __future__ import annotations

import torch
from torch import nn


class ToyConvNet(nn.Module):
    """Two 3x3 convolutions with the timestep added as a per-channel bias: ``(B, C, H, W) -> (B, C, H, W)``."""

    def __init__(self, in_channels: int, hidden: int = 8, num_classes: int = 0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv_in = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.time = nn.Embedding(1000, hidden)
        self.conv_out = nn.Conv2d(hidden, in_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv_in(x) + self.time(t.long().clamp(0, 999))[:, :, None, None]  # (B, hidden, H, W)
        return self.conv_out(torch.nn.functional.silu(h))

"""``task=summary``: the network's parameters and forward FLOPs for one sample, as ``params=``, ``gflops=`` and
``gmacs=`` lines (``FlopCounterMode``: a multiply-add is two FLOPs, one MAC; DiT and U-ViT's "GFLOPs" are
MACs, DiT-XL/2: 118.6). Built on the meta device, so a paper-sized network costs no memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class NetworkSummary:
    params: int  # trainable and frozen parameters (not buffers)
    flops: int  # forward FLOPs of one sample, a multiply-add counted as two

    @property
    def gflops(self) -> float:
        return self.flops / 1e9

    @property
    def gmacs(self) -> float:
        return self.flops / 2e9

    def lines(self) -> list[str]:
        return [f"params={self.params}", f"gflops={self.gflops:.4f}", f"gmacs={self.gmacs:.4f}"]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_flops(model: nn.Module, sample_shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass on one sample of ``sample_shape`` (with a class label if the network takes
    one), on the device of the model's parameters (the meta device computes shapes only)."""
    device = next(model.parameters()).device
    x = torch.zeros((1, *sample_shape), device=device)
    t = torch.zeros(1, device=device)
    y = torch.zeros(1, dtype=torch.long, device=device) if getattr(model, "num_classes", 0) else None
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(x, t, y)
    return counter.get_total_flops()


def summarize(model: nn.Module, sample_shape: tuple[int, ...]) -> NetworkSummary:
    return NetworkSummary(count_parameters(model), forward_flops(model, sample_shape))


def summary(model: nn.Module, sample_shape: tuple[int, ...]) -> NetworkSummary:
    """Print the network's figures (one ``key=value`` a line) and return them."""
    figures = summarize(model, sample_shape)
    print(f"model={type(model).__name__} sample_shape={list(sample_shape)}")
    print("\n".join(figures.lines()))
    return figures

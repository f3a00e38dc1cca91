"""``task=summary``: the network's parameters and forward FLOPs for one sample, as ``params=``, ``gflops=`` and
``gmacs=`` lines (``FlopCounterMode``: a multiply-add is two FLOPs, one MAC; DiT and U-ViT's "GFLOPs" are
MACs, DiT-XL/2: 118.6). Built on the meta device, so a paper-sized network costs no memory.

:func:`flop_counter` is the ``FlopCounterMode`` every FLOP figure of the project counts with: it adds CPU
attention, which PyTorch 2.13's counter leaves out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils import flop_counter as counting
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


def _cpu_attention(query: torch.Size, key: torch.Size, value: torch.Size, *args: object, out_shape: object = None,
                   **kwargs: object) -> int:
    return counting.sdpa_flop_count(query, key, value)


def _attention_backward(grad_out: torch.Size, query: torch.Size, key: torch.Size, value: torch.Size, *args: object,
                        out_shape: object = None, **kwargs: object) -> int:
    # The four gradient matmuls, twice the forward's: the model's FLOPs, as the math path's bmm calls count them;
    # PyTorch's GPU formula adds the fused kernel's recomputed scores (hardware FLOPs), which MFU leaves out.
    return 2 * counting.sdpa_flop_count(query, key, value)


# On CPU, scaled_dot_product_attention runs the fused kernel below, which PyTorch 2.13's FlopCounterMode has no
# formula for: it counted 0 FLOPs for attention there (pytorch/pytorch#195460; on the meta device and on GPU it is
# counted).
# The GPU kernels' backward is counted the same way, so that an MFU counts model FLOPs on every device.
aten = torch.ops.aten
ATTENTION = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _attention_backward,
    aten._scaled_dot_product_flash_attention_backward: _attention_backward,
    aten._scaled_dot_product_efficient_attention_backward: _attention_backward,
    aten._scaled_dot_product_cudnn_attention_backward: _attention_backward,
}


def flop_counter() -> FlopCounterMode:
    """A silent ``FlopCounterMode`` that also counts CPU attention, and attention's backward as model FLOPs
    (:data:`ATTENTION`)."""
    return FlopCounterMode(display=False, custom_mapping=ATTENTION)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_flops(model: nn.Module, sample_shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass on one sample of ``sample_shape`` (with a class label if the network takes
    one), on the device of the model's parameters (the meta device computes shapes only)."""
    device = next(model.parameters()).device
    x = torch.zeros((1, *sample_shape), device=device)
    t = torch.zeros(1, device=device)
    y = torch.zeros(1, dtype=torch.long, device=device) if getattr(model, "num_classes", 0) else None
    with flop_counter() as counter, torch.no_grad():
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

"""Scaled dot-product attention for every backbone: PyTorch's fused kernels, with float32 on CPU under autocast.

Under bf16 autocast PyTorch 2.13 runs attention in bf16, and its fused CPU kernel's backward in bf16 is far slower
than in float32 where the CPU has no AMX: on a 2-core AMD EPYC with AVX-512 BF16 it took 59% of a bf16 training step
of the MNIST-sized DiT, which ran at 0.60x its fp32 steps/s. So on CPU the attention runs in float32 (the matmuls
around it stay in bf16): a bf16 training step 1.14x (default U-Net) to 2.02x (U-ViT) faster than with the bf16 kernel
and faster than fp32 for every backbone (experiments/benchmarks/speed/attention.py, one thread, 2026-12-07). On CUDA
the bf16 flash and memory-efficient kernels are what autocast is for. AMX CPUs were not measured.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_REDUCED = (torch.bfloat16, torch.float16)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d)) v`` over ``(B, heads, N, d)`` tensors, in their dtype; float32 inside on CPU."""
    if q.device.type != "cpu" or q.dtype not in _REDUCED:
        return F.scaled_dot_product_attention(q, k, v)
    with torch.autocast("cpu", enabled=False):  # autocast would run it in bf16 again
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    return out.to(q.dtype)

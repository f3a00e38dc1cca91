"""Side-by-side timing for the benchmark: interleaved rounds, medians, paired ratios, matmul peak.

The benchmark machine is shared, so absolute speeds drift with other people's load. Every comparison therefore
runs its variants in one loop, one measurement of each per round, and reports medians and the median of the
per-round ratios: load that changes slowly over a round falls on all variants alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping

import torch


def interleave(variants: Mapping[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Call every variant once per round and collect what each returns (a rate or a duration).

    The order flips every round (A B C, C B A, A B C, ...), so a variant does not always run right after the
    same neighbour (whose caches or allocations it would inherit) or always first in a round.
    """
    results: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for round_index in range(rounds):
        for name in names if round_index % 2 == 0 else reversed(names):
            results[name].append(variants[name]())
    return results


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over rounds of ``numerator[i] / denominator[i]`` (both measured in round i)."""
    return median([a / b for a, b in zip(numerator, denominator, strict=True)])


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so that a wall-clock reading covers it (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``function`` takes, GPU work included."""
    synchronize(device)
    start = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - start


def matmul_flops_per_second(size: int, dtype: torch.dtype, device: torch.device, repeats: int = 3) -> float:
    """FLOP/s of ``repeats`` square ``size x size`` matmuls (2 size^3 FLOPs each): this machine's dense peak.

    On the CPU an fp32 ``a @ b`` runs in MKL while convolutions (and bf16 matmuls) run in oneDNN, and the two
    libraries' fp32 GEMMs differ by machine (oneDNN's 1.2x MKL's at 1024 on the project's AMD EPYC): the fp32 peak
    is the faster of the two, so that a model's share of it is a share of what the machine does, not of one library.
    """
    shape = (size, size, size)
    rate = gemm_flops_per_second(shape, dtype, device, repeats)
    if device.type == "cpu" and dtype == torch.float32:
        rate = max(rate, onednn_gemm_flops_per_second(shape, repeats))
    return rate


def gemm_flops_per_second(shape: tuple[int, int, int], dtype: torch.dtype, device: torch.device,
                          repeats: int = 3) -> float:
    """FLOP/s of ``repeats`` ``(m, k) @ (k, n)`` matmuls, ``shape = (m, k, n)`` (2 m k n FLOPs each)."""
    m, k, n = shape
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=generator).to(device, dtype)
    b = torch.randn(k, n, generator=generator).to(device, dtype)
    a @ b  # first call picks and caches the kernel
    seconds = timed(lambda: [a @ b for _ in range(repeats)], device)
    return 2 * m * k * n * repeats / seconds


def onednn_gemm_flops_per_second(shape: tuple[int, int, int], repeats: int = 3) -> float:
    """FLOP/s of ``repeats`` fp32 ``(m, k) @ (k, n)`` GEMMs in oneDNN on the CPU, the left operand already in its
    layout (``torch._C._nn.mkldnn_linear``: torch routes dense fp32 matmuls to MKL and exposes oneDNN's only so);
    0.0 where this torch build has no oneDNN."""
    if not torch.backends.mkldnn.is_available():
        return 0.0
    m, k, n = shape
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=generator).to_mkldnn()
    weight = torch.randn(n, k, generator=generator)  # the linear's (out, in) weight: a @ weight.T
    try:
        torch._C._nn.mkldnn_linear(a, weight, None)
    except RuntimeError:  # a build whose oneDNN lacks the op: MKL's figure stands alone
        return 0.0
    seconds = timed(lambda: [torch._C._nn.mkldnn_linear(a, weight, None) for _ in range(repeats)],
                    torch.device("cpu"))
    return 2 * m * k * n * repeats / seconds

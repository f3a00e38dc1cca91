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
    """FLOP/s of ``repeats`` square ``size x size`` matmuls (2 size^3 FLOPs each): this machine's dense peak."""
    return gemm_flops_per_second((size, size, size), dtype, device, repeats)


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

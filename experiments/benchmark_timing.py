"""Side-by-side timing for the benchmark: interleaved rounds, medians, paired ratios, matmul peak, the machine.

The benchmark machine is shared, so absolute speeds drift with other people's load. Every comparison therefore
runs its variants in one loop, one measurement of each per round, and reports medians and the median of the
per-round ratios: load that changes slowly over a round falls on all variants alike.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

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
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device, dtype)
    b = torch.randn(size, size, generator=generator).to(device, dtype)
    a @ b  # first call picks and caches the kernel
    seconds = timed(lambda: [a @ b for _ in range(repeats)], device)
    return 2 * size**3 * repeats / seconds


@dataclass(frozen=True)
class Machine:
    """What the figures were measured on; printed above the table."""

    processor: str
    cores: int
    bf16_features: str
    torch_version: str
    threads: int
    device: str
    date: str
    commit: str

    def markdown(self) -> str:
        return (
            f"- machine: {self.processor}, {self.cores} cores ({self.bf16_features}); {self.device}\n"
            f"- torch {self.torch_version}, intra-op threads: {self.threads}, Python {platform.python_version()}\n"
            f"- date: {self.date}; code: commit {self.commit} plus the working tree's changes"
        )


def describe_machine(device: torch.device) -> Machine:
    gpu = f"GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else "device cpu"
    return Machine(
        processor=_cpu_model(),
        cores=os.cpu_count() or 0,
        bf16_features=_bf16_features(),
        torch_version=torch.__version__,
        threads=torch.get_num_threads(),
        device=gpu,
        date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        commit=_commit(),
    )


def load_average() -> float:
    """The 1-minute load average (other engineers' jobs share these cores)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def _commit() -> str:
    """The checked-out commit (read-only ``git rev-parse``), or ``unknown`` outside a git checkout."""
    try:
        result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parents[1],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return result.stdout.strip() or "unknown"


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _bf16_features() -> str:
    """Which bf16 matmul hardware the CPU reports: AMX tiles (Intel) and/or AVX-512 BF16 instructions."""
    cpuinfo = Path("/proc/cpuinfo")
    flags = set(cpuinfo.read_text().split()) if cpuinfo.is_file() else set()
    amx = "AMX: yes" if "amx_bf16" in flags else "AMX: no"
    avx = "AVX-512 BF16: yes" if "avx512_bf16" in flags else "AVX-512 BF16: no"
    return f"{avx}, {amx}; torch CPU capability {torch.backends.cpu.get_cpu_capability()}"

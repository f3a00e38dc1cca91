"""Where tensors live and in which precision the networks run: shared by the trainer, sampler and evaluators."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, ContextManager, Literal

import torch

from diffusion.runtime.checks import ConfigError, check_choice

Precision = Literal["fp32", "bf16", "fp16"]


def resolve_device(device: str, key: str = "trainer.device") -> torch.device:
    """``auto`` picks CUDA when present, else CPU. ``key`` is the config key the device came from.

    Raises:
        ConfigError: ``cuda`` requested on a machine without CUDA.
    """
    check_choice(device, key, ("auto", "cpu", "cuda"))
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}=cuda but no CUDA device is available; use {key}=auto or cpu")
    return torch.device(device)


def fast_bf16(device: torch.device, cpu_flags: str | None = None) -> bool:
    """Whether bf16 matmuls run in hardware here: a CUDA device that supports bf16, or a CPU with AMX or
    AVX-512 BF16 (on an AVX-512 BF16 AMD EPYC bf16 trains every backbone 1.23-1.71x faster than fp32:
    experiments/benchmarks/speed/attention_cpu.md). Elsewhere bf16 is emulated (15x slower than fp32 on the default
    U-Net on an AVX2 CPU)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if cpu_flags is None:
        try:
            cpu_flags = open("/proc/cpuinfo").read()
        except OSError:
            return False
    return any(flag in cpu_flags.split() for flag in ("amx_bf16", "avx512_bf16"))


def resolve_precision(precision: str, device: torch.device, key: str) -> Precision:
    """``auto``: bf16 where it runs in hardware (:func:`fast_bf16`), else fp32; other values pass through.

    Raises:
        ConfigError: a value other than ``auto``, ``fp32``, ``bf16``, ``fp16``, naming ``key``.
    """
    check_choice(precision, key, ("auto", "fp32", "bf16", "fp16"))
    if precision == "auto":
        return "bf16" if fast_bf16(device) else "fp32"
    return precision  # type: ignore[return-value]


def autocast(device: torch.device, precision: Precision) -> ContextManager[Any]:
    """Mixed-precision context for forward passes (fp32: none).

    Raises:
        ValueError: a precision not resolved to fp32, bf16 or fp16 (``auto`` goes through :func:`resolve_precision`
            first; taken as fp16 it would run CPU autocast in float16, slowly and not as asked).
    """
    if precision == "fp32":
        return nullcontext()
    if precision not in ("bf16", "fp16"):
        raise ValueError(f"autocast takes fp32, bf16 or fp16, got {precision!r}: resolve_precision() it first")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy to the device once; through pinned memory for CUDA, so the host-to-device copy runs at full speed."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)

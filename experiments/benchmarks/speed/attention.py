"""Attention's precision on CPU under bf16 autocast, side by side in one process: each backbone's training step in
bf16 as the project runs it (attention in float32: diffusion/models/attention.py) against the same step with
PyTorch's fused bf16 attention kernel, and the step in fp32 beside both.

Backbones: the default run's U-Net, ``experiment=digits_dit``, and the backbone benchmark's four families on its
MNIST budget (about 0.5M parameters each; needs the MNIST files under ``data.root``). The check: bf16 with float32
attention no slower than with the bf16 kernel (>= 0.95x, the noise of these shared cores) for every backbone.

    python -m experiments.benchmarks.speed.attention --threads 1 --out experiments/benchmarks/speed/attention_cpu.md
    python -m experiments.benchmarks.speed.attention --quick      # tiny networks on the digits, seconds

The bf16 rows mean something only where bf16 runs in hardware (AVX-512 BF16 or AMX: the header's machine line);
without it autocast emulates bf16 and every bf16 step is many times slower than fp32.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from unittest import mock

import torch

import diffusion.models.attention as attention_module
from experiments.benchmarks.backbones import MNIST, QUICK
from experiments.benchmarks.speed.timing import interleave, median, paired_ratio, timed
from experiments.benchmarks.speed.training import build_parts, compose_config, optimizer_step
from experiments.lib import finish_timing, markdown_table, parse_timing_args

BAR = 0.95  # bf16 with float32 attention: at least this share of the bf16 kernel's steps/s
VARIANTS = ("fp32", "bf16, bf16 attention kernel", "bf16")  # the last: as the project runs it


def backbones(quick: bool) -> dict[str, tuple[str, ...]]:
    """Backbone name -> run.py overrides."""
    if quick:
        return {name: (*overrides, "method.num_timesteps=20") for name, overrides in QUICK.families.items()}
    return {"U-Net, default run": (), "DiT, experiment=digits_dit": ("experiment=digits_dit",),
            **{f"{name}, MNIST budget": overrides for name, overrides in MNIST.families.items()}}


def with_bf16_kernel(step: Callable[[], None]) -> Callable[[], None]:
    """``step`` with attention handed to PyTorch in bf16, as before diffusion/models/attention.py: its set of dtypes
    to run in float32 emptied for the call."""
    def bf16_kernel() -> None:
        with mock.patch.object(attention_module, "_REDUCED", ()):
            step()
    return bf16_kernel


def measure(families: dict[str, tuple[str, ...]], batch_size: int | None, rounds: int, steps_per_round: int,
            device: torch.device) -> tuple[dict[str, dict[str, list[float]]], dict[str, int]]:
    """Steps/s per round of every backbone in every variant (all interleaved), and each backbone's parameters."""
    timers, params = {}, {}
    for name, overrides in families.items():
        cfg = compose_config([*overrides, "trainer.progress=false"])
        batch = batch_size or int(cfg.trainer.batch_size)
        for variant in VARIANTS:
            parts = build_parts(cfg)
            step = optimizer_step(parts, batch, device, "fp32" if variant == "fp32" else "bf16")
            step = with_bf16_kernel(step) if variant == VARIANTS[1] else step
            step()  # warm-up
            timers[(name, variant)] = lambda step=step: steps_per_round / timed(
                lambda: [step() for _ in range(steps_per_round)], device)
            params[name] = sum(p.numel() for p in parts.model.parameters())
    runs = interleave({f"{name} | {variant}": timer for (name, variant), timer in timers.items()}, rounds)
    rates = {name: {variant: runs[f"{name} | {variant}"] for variant in VARIANTS} for name in families}
    return rates, params


def report(rates: dict[str, dict[str, list[float]]],
           params: dict[str, int]) -> tuple[list[str], list[tuple[bool, str]]]:
    """The table (steps/s medians, ratios as medians of per-round ratios) and one check per backbone."""
    rows, checks = [], []
    for name, runs in rates.items():
        gain = paired_ratio(runs["bf16"], runs[VARIANTS[1]])
        rows.append([name, f"{params[name] / 1e6:.2f}M", *(f"{median(runs[v]):.2f}" for v in VARIANTS), f"{gain:.2f}x",
                     f"{paired_ratio(runs[VARIANTS[1]], runs['fp32']):.2f}x",
                     f"{paired_ratio(runs['bf16'], runs['fp32']):.2f}x"])
        checks.append((gain >= BAR, f"{name}: bf16 with float32 attention at {gain:.2f}x the steps/s of the bf16 "
                                    f"attention kernel (bar >= {BAR})"))
    header = ["backbone", "params", "fp32 steps/s", "bf16, bf16 attention kernel", "bf16 (float32 attention)",
              "float32 attention / bf16 kernel", "bf16 kernel / fp32", "bf16 / fp32"]
    return markdown_table(header, rows), checks


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_timing_args(__doc__, argv, rounds=5)
    started, steps = time.perf_counter(), 1 if args.quick else 3
    rates, params = measure(backbones(args.quick), 16 if args.quick else None, args.rounds, steps, torch.device("cpu"))
    method = (f"One process; each backbone's optimizer step (AdamW, its preset's batch) in fp32, in bf16 autocast with "
              f"PyTorch's fused attention kernel in bf16, and in bf16 as the project runs it (attention in float32); "
              f"all variants interleaved, {args.rounds} rounds of {steps} steps; steps/s medians, ratios the medians "
              f"of per-round ratios.")
    return finish_timing(args, "Attention precision under bf16 autocast on CPU: training steps/s", method,
                         *report(rates, params), started, "experiments.benchmarks.speed.attention", argv)


if __name__ == "__main__":
    sys.exit(main())

"""Speed and memory benchmark of the default run; prints a markdown table.

    python -m experiments.benchmarks.speed                      # full run, ~10 minutes on 2 CPU cores
    python -m experiments.benchmarks.speed --quick              # every section at toy size, seconds: proves it works
    python -m experiments.benchmarks.speed --only sampling      # one section: training | sampling | memory
    python -m experiments.benchmarks.speed --threads 1 --out experiments/benchmarks/speed/speed_cpu.md
    python -m experiments.benchmarks.speed trainer.batch_size=64   # any run.py override applies to every section

Figures, each on the default run's components (``conf/config.yaml``: the U-Net of ``conf/model/unet.yaml`` on
8x8 digits, AdamW, bf16 autocast, batch 128):

- trainer-overhead: ``Trainer.train()`` steps/s against the same step written as a bare PyTorch loop (target:
  >= 0.95); precision: bf16 against fp32 steps/s; compile: ``torch.compile`` against eager, and the compile time;
- ddim-vs-ddpm: DDIM-50 against DDPM-1000 seconds per sample (``Sampler.sample``, one batch);
- sampler-overhead-<method>: the Sampler against an inline loop of the same update, per step, with a trivial
  network (target: <= 1.1); noise-streams: drawing each sample's noise from its own generator against one
  generator for the batch;
- flops: model FLOP/s in training as a fraction of the measured bf16 / fp32 matmul peak;
- memory: peak resident memory of ``python run.py`` and its growth from epoch 2 to the last epoch;
  memory-cifar10: the peak with a CIFAR-10-sized synthetic set (60,000 uint8 images) against a small set;
- torchrun-sampling: sampling throughput (DDIM, default U-Net) of 2 torchrun processes (gloo, CPU) against 1.

The machine is shared: variants of a comparison run interleaved, one measurement each per round, and the
table gives medians and the median of per-round ratios. Absolute figures move with the load; ratios less.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from experiments.benchmarks.speed.memory import measure_cifar_sized, measure_default_run
from experiments.benchmarks.speed.report import Report, Row, cifar_memory_rows, memory_rows, process_rows, sampling_rows, training_rows
from experiments.benchmarks.speed.sampling import measure_ddim_vs_ddpm, measure_noise_streams, measure_overhead, \
    measure_processes
from experiments.benchmarks.speed.training import compose_config, measure_training
from experiments.lib import add_common_flags, describe_machine, load_average, reproduce_command, set_threads, \
    write_results

SECTIONS = ("training", "sampling", "memory")
_START = time.perf_counter()


@dataclass(frozen=True)
class Settings:
    """How long each section measures; ``--quick`` shrinks the model and every count."""

    overrides: tuple[str, ...]
    training_rounds: int
    with_compile: bool
    matmul_size: int
    sample_batch: int  # samples per Sampler.sample call (one batch): ddim-vs-ddpm, sampler-overhead
    sampling_rounds: int
    ddim_steps: int
    overhead_rounds: int
    memory_epochs: int
    memory_overrides: tuple[str, ...] = ()
    process_samples: int = 400  # torchrun-sampling: samples drawn by 1 and by 2 processes, in batches of process_batch
    process_batch: int = 50
    cifar_per_file: int = 10_000  # memory-cifar10: images in each of the synthetic CIFAR-10's six files (the real count)


FULL = Settings(overrides=(), training_rounds=10, with_compile=True, matmul_size=2048, sample_batch=100,
                sampling_rounds=2, ddim_steps=50, overhead_rounds=31, memory_epochs=8)
_TINY = ("model.base_channels=8", "model.num_res_blocks=1", "method.num_timesteps=50")
QUICK = Settings(overrides=_TINY, training_rounds=1, with_compile=False, matmul_size=256, sample_batch=8,
                 sampling_rounds=1, ddim_steps=5, overhead_rounds=2, memory_epochs=3,
                 memory_overrides=(*_TINY, "trainer.progress=false"), process_samples=16, process_batch=4,
                 cifar_per_file=200)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_flags(parser, out_help="also write the table to this markdown file")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--only", choices=SECTIONS, action="append", help="run only this section (repeatable)")
    parser.add_argument("overrides", nargs="*", help="run.py config overrides applied to every section")
    return parser.parse_args(argv)


def section_command(args: argparse.Namespace, section: str) -> str:
    """The command line that measures ``section`` again with this run's options."""
    options = ["--only", section]
    options += ["--quick"] if args.quick else []
    options += ["--device", args.device] if args.device != "cpu" else []
    options += ["--threads", str(args.threads)] if args.threads else []
    return reproduce_command("experiments.benchmarks.speed", [*options, *args.overrides])


def run(args: argparse.Namespace) -> Report:
    settings = QUICK if args.quick else FULL
    device = torch.device(args.device)
    overrides = [*settings.overrides, f"trainer.device={args.device}", *args.overrides]
    report = Report(machine=describe_machine(device), command=reproduce_command("experiments.benchmarks.speed"),
                    load_before=load_average())
    sections = args.only or list(SECTIONS)
    if "training" in sections:
        report.rows += training_section(settings, overrides, device, section_command(args, "training"))
    if "sampling" in sections:
        report.rows += sampling_section(settings, overrides, device, section_command(args, "sampling"),
                                        args.threads or 1)
    if "memory" in sections:
        _progress(f"memory: python run.py for {settings.memory_epochs} epochs")
        memory_overrides = [*settings.memory_overrides, f"trainer.device={args.device}", *args.overrides]
        report.rows += memory_rows(measure_default_run(settings.memory_epochs, memory_overrides, args.threads))
        _progress(f"memory: a synthetic CIFAR-10 of {6 * settings.cifar_per_file:,} images")
        report.rows += cifar_memory_rows(measure_cifar_sized(settings.cifar_per_file, overrides=[
            f"trainer.device={args.device}", *args.overrides], threads=args.threads))
    report.load_after = load_average()
    _progress("done")
    return report


def training_section(settings: Settings, overrides: list[str], device: torch.device, reproduce: str) -> list[Row]:
    """Trainer overhead, precision, compile, FLOP/s."""
    _progress("training: Trainer vs bare loop, bf16 vs fp32" + (", compile" if settings.with_compile else ""))
    with tempfile.TemporaryDirectory(prefix="benchmark_runs_") as tmp:
        figures = measure_training(compose_config(overrides), device, Path(tmp), settings.training_rounds,
                                   settings.with_compile, settings.matmul_size)
    return training_rows(figures, settings.training_rounds, reproduce)


def sampling_section(settings: Settings, overrides: list[str], device: torch.device, reproduce: str,
                     threads: int) -> list[Row]:
    """DDIM vs DDPM, Sampler overhead, noise streams and torchrun sampling (DDPM through all T steps, DDIM with
    ``settings.ddim_steps``; torchrun on the CPU only)."""
    _progress("sampling: DDIM vs DDPM, Sampler overhead, noise streams")
    ddpm_cfg, ddim_cfg = compose_config([*overrides, "method=ddpm"]), compose_config([*overrides, "method=ddim"])
    batch, steps = settings.sample_batch, settings.ddim_steps
    per_sample = measure_ddim_vs_ddpm(ddpm_cfg, ddim_cfg, steps, batch, device, settings.sampling_rounds)
    overhead = [
        measure_overhead(ddpm_cfg, "ddpm", None, batch, device, settings.overhead_rounds),
        measure_overhead(ddim_cfg, "ddim", steps, batch, device, settings.overhead_rounds),
    ]
    noise = measure_noise_streams(ddpm_cfg, batch, device, settings.overhead_rounds)
    rows = sampling_rows(per_sample, overhead, noise, reproduce)
    if device.type == "cpu":
        _progress("sampling: 2 torchrun processes vs 1")
        processes = measure_processes(overrides, settings.process_samples, settings.process_batch, steps,
                                      threads=threads)
        rows += process_rows(processes, reproduce)
    return rows


def _progress(message: str) -> None:
    print(f"[benchmark {time.perf_counter() - _START:5.0f} s] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is available; use --device cpu", file=sys.stderr)
        return 2
    set_threads(args.threads)
    text = run(args).markdown()
    print(text)
    if args.out is not None:
        write_results(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

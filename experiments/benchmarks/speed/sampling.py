"""Sampling figures: DDIM-50 against DDPM-1000 per sample, the Sampler's per-step overhead against a
bare loop over the same update, what per-sample noise streams cost and sampling throughput
of 2 torchrun processes against 1.

For the Sampler's overhead the network is :class:`ScaledIdentity`, which costs next to nothing, so what is timed is the
loop itself: the Sampler with its solver against the update written inline with the coefficients
as Python numbers. Both draw the same noise the same way (one generator per sample,
:class:`~diffusion.sampling.sampler.SampleNoise`), so they must return the same samples (to float32 rounding: the
solver steps in sigma space); :func:`measure_overhead` checks that before it reports a ratio.

The torchrun figure runs this module under torchrun (``python -m torch.distributed.run --nproc_per_node=N -m
experiments.benchmarks.speed.sampling --worker ...``): every rank builds the same sampler and :func:`throughput_worker`
times one ``Sampler.sample`` of the whole set on rank 0, gather included.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from diffusion.app.build import SamplerFactory
from diffusion.runtime.devices import autocast
from diffusion.runtime.distributed import DistributedContext
from diffusion.methods.base import BaseMethod
from diffusion.sampling.sampler import SampleNoise, Sampler
from experiments.benchmarks.speed.timing import interleave, median, timed
from experiments.benchmarks.speed.training import build_parts, compose_config
from experiments.lib import ROOT, run_py_env


class ScaledIdentity(nn.Module):
    """A trivial "network": predicts ``0.1 * x_t``, so a sampling step costs only the loop's own work."""

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return 0.1 * x


def make_sampler(cfg: DictConfig, model: nn.Module, method: BaseMethod, sample_shape: tuple[int, ...],
                 num_samples: int, steps: int | None, device: torch.device, batch_size: int | None = None,
                 distributed: DistributedContext | None = None) -> Sampler:
    """The configured sampler (``conf/sampler``) for ``model`` and ``method``, made as ``run.py`` makes it:
    ``num_samples`` in batches of ``batch_size`` (None: one batch)."""
    return SamplerFactory(cfg, method, sample_shape)(
        model, dist=distributed, num_samples=num_samples, batch_size=batch_size or num_samples, steps=steps,
        device=str(device),
    )


def bare_ddpm(sampler: Sampler, num_samples: int) -> torch.Tensor:
    """DDPM ancestral sampling (Ho et al. Alg. 2 with the x0-clipped posterior mean, eqs. 6-7), inline."""
    method, device, model = sampler.method, sampler.device, sampler.model
    noise = SampleNoise(sampler.seed, range(num_samples), sampler.sample_shape, device)  # as the Sampler draws
    x = noise()  # x_T
    sqrt_abar, sqrt_one_minus_abar = method.sqrt_alphas_cumprod.tolist(), method.sqrt_one_minus_alphas_cumprod.tolist()
    coef1, coef2 = method.posterior_mean_coef1.tolist(), method.posterior_mean_coef2.tolist()
    sigma = method.posterior_variance.sqrt().tolist()  # sqrt(beta_tilde_t)
    t_batch = torch.empty(num_samples, dtype=torch.long, device=device)
    for t in range(method.num_timesteps - 1, -1, -1):
        with autocast(device, sampler.precision):
            eps = model(x, t_batch.fill_(t))
        eps = eps.to(x.dtype)
        z = noise()
        x0 = ((x - sqrt_one_minus_abar[t] * eps) / sqrt_abar[t]).clamp(-1.0, 1.0)
        x = coef1[t] * x0 + coef2[t] * x
        if t > 0:
            x = x + sigma[t] * z
    return x.float().cpu()


def bare_ddim(sampler: Sampler, num_samples: int) -> torch.Tensor:
    """Deterministic DDIM (Song et al. eq. 12, eta = 0) on the sampler's timesteps, inline."""
    method, device, model = sampler.method, sampler.device, sampler.model
    x = SampleNoise(sampler.seed, range(num_samples), sampler.sample_shape, device)()  # x_T, as the Sampler draws
    abar = method.alphas_cumprod.tolist()
    t_batch = torch.empty(num_samples, dtype=torch.long, device=device)
    timesteps = sampler.timesteps()
    for t, t_prev in zip(timesteps, timesteps[1:] + [-1]):
        abar_t, abar_prev = abar[t], (abar[t_prev] if t_prev >= 0 else 1.0)
        with autocast(device, sampler.precision):
            eps = model(x, t_batch.fill_(t))
        eps = eps.to(x.dtype)
        x0 = ((x - math.sqrt(1 - abar_t) * eps) / math.sqrt(abar_t)).clamp(-1.0, 1.0)
        eps = (x - math.sqrt(abar_t) * x0) / math.sqrt(1 - abar_t)  # eps consistent with the clipped x0
        x = math.sqrt(abar_prev) * x0 + math.sqrt(1 - abar_prev) * eps
    return x.float().cpu()


@dataclass
class OverheadFigures:
    """Seconds per sampling step, per round, of the Sampler and of the bare loop."""

    method: str
    steps: int
    num_samples: int
    sampler: list[float]
    bare: list[float]
    max_difference: float  # between the two loops' samples: they do the same math


def measure_overhead(cfg: DictConfig, method_name: str, steps: int | None, num_samples: int,
                     device: torch.device, rounds: int) -> OverheadFigures:
    """The Sampler with a trivial model against the inline loop of the same update (DDPM or DDIM, eta = 0)."""
    parts = build_parts(cfg)
    sampler = make_sampler(cfg, ScaledIdentity(), parts.method, parts.data.sample_shape, num_samples, steps, device)
    bare = bare_ddpm if method_name == "ddpm" else bare_ddim
    if sampler.eta != 0 and method_name == "ddim":
        raise ValueError("the DDIM overhead loop is written for sampler.eta=0; drop the sampler.eta override")
    difference = (sampler.sample().samples - bare(sampler, num_samples)).abs().max().item()
    if difference > 1e-4:
        raise AssertionError(f"bare {method_name} loop and Sampler disagree by {difference:.2e}: not the same math")
    num_steps = len(sampler.timesteps(steps))
    runs = interleave({
        "sampler": lambda: timed(sampler.sample, device) / num_steps,
        "bare": lambda: timed(lambda: bare(sampler, num_samples), device) / num_steps,
    }, rounds)
    return OverheadFigures(method_name, num_steps, num_samples, runs["sampler"], runs["bare"], difference)


@dataclass
class SamplingFigures:
    """Seconds per sample (per round) of DDPM through all T steps and of DDIM with ``ddim_steps``."""

    ddpm_steps: int
    ddim_steps: int
    num_samples: int
    ddpm: list[float]
    ddim: list[float]


def measure_ddim_vs_ddpm(cfg_ddpm: DictConfig, cfg_ddim: DictConfig, ddim_steps: int, num_samples: int,
                         device: torch.device, rounds: int) -> SamplingFigures:
    """``Sampler.sample`` on the default U-Net, one batch of ``num_samples``, DDPM-T against DDIM-``ddim_steps``."""
    ddpm_parts, ddim_parts = build_parts(cfg_ddpm), build_parts(cfg_ddim)
    shape = ddpm_parts.data.sample_shape
    ddpm = make_sampler(cfg_ddpm, ddpm_parts.model, ddpm_parts.method, shape, num_samples, None, device)
    ddim = make_sampler(cfg_ddim, ddim_parts.model, ddim_parts.method, shape, num_samples, ddim_steps, device)
    ddim.sample()  # warm-up: kernel selection, allocator
    runs = interleave({
        "ddpm": lambda: timed(ddpm.sample, device) / num_samples,
        "ddim": lambda: timed(ddim.sample, device) / num_samples,
    }, rounds)
    return SamplingFigures(ddpm_parts.method.num_timesteps, ddim_steps, num_samples, runs["ddpm"], runs["ddim"])


@dataclass
class NoiseStreamFigures:
    """Seconds per draw of one step's noise ``(num_samples, *sample_shape)`` (per round), from one
    generator per sample (the Sampler's streams) and from one generator for the batch (the cheaper, batch-size-dependent alternative)."""

    num_samples: int
    sample_shape: tuple[int, ...]
    per_sample: list[float]
    one_generator: list[float]
    setup: float  # seconds to seed the per-sample generators of one batch


def measure_noise_streams(cfg: DictConfig, num_samples: int, device: torch.device, rounds: int,
                          draws: int = 50) -> NoiseStreamFigures:
    """Time ``draws`` draws of a batch's step noise both ways, interleaved over ``rounds``."""
    shape = build_parts(cfg).data.sample_shape
    setup = timed(lambda: SampleNoise(0, range(num_samples), shape, device), device)
    streams = SampleNoise(0, range(num_samples), shape, device)
    generator = torch.Generator().manual_seed(0)

    def one_generator() -> torch.Tensor:
        return torch.randn((num_samples, *shape), generator=generator).to(device)

    runs = interleave({
        "per_sample": lambda: timed(lambda: [streams() for _ in range(draws)], device) / draws,
        "one": lambda: timed(lambda: [one_generator() for _ in range(draws)], device) / draws,
    }, rounds)
    return NoiseStreamFigures(num_samples, tuple(shape), runs["per_sample"], runs["one"], setup)


@dataclass
class ProcessFigures:
    """Images/s of ``Sampler.sample`` under torchrun with 1 and with 2 CPU processes (gloo)."""

    num_samples: int
    batch_size: int
    steps: int
    rates: dict[int, float]  # processes -> samples per second (rank 0: sampling and the gather)
    identical: bool  # the 2-process samples equal the 1-process ones bit for bit
    threads: int


def measure_processes(overrides: Sequence[str], num_samples: int, batch_size: int, steps: int,
                      process_counts: Sequence[int] = (1, 2), threads: int = 1) -> ProcessFigures:
    """Launch :func:`throughput_worker` under torchrun once per process count (gloo, CPU, ``threads`` each)."""
    rates: dict[int, float] = {}
    samples: dict[int, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="benchmark_processes_") as tmp:
        for count in process_counts:
            out = Path(tmp) / f"{count}.pt"
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={count}", "-m",
                       "experiments.benchmarks.speed.sampling", "--worker", "--out", str(out), "--num-samples",
                       str(num_samples), "--batch-size", str(batch_size), "--steps", str(steps), *overrides]
            env = {**run_py_env(), "OMP_NUM_THREADS": str(threads)}
            result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
            if result.returncode != 0:
                raise RuntimeError(f"torchrun with {count} processes failed:\n{result.stderr[-3000:]}")
            record = torch.load(out)
            rates[count] = num_samples / record["seconds"]
            samples[count] = record["samples"].numpy().tobytes()
    identical = len(set(samples.values())) == 1
    return ProcessFigures(num_samples, batch_size, steps, rates, identical, threads)


def throughput_worker(argv: Sequence[str] | None = None) -> None:
    """One torchrun rank of the torchrun-sampling figure: DDIM-``steps`` on the default U-Net (``overrides`` apply), one warm-up
    batch, then one timed ``Sampler.sample`` of ``num_samples`` in batches of ``batch_size``; rank 0 saves its
    seconds and the gathered samples to ``--out``."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--num-samples", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    dist = DistributedContext.from_environment("cpu")
    cfg = compose_config([*args.overrides, "method=ddim", "trainer.device=cpu"])
    parts = build_parts(cfg)  # seeded: the same weights on every rank
    sampler = make_sampler(cfg, parts.model, parts.method, parts.data.sample_shape, args.num_samples, args.steps,
                           torch.device("cpu"), batch_size=args.batch_size, distributed=dist)
    sampler.sample(num_samples=args.batch_size * dist.world_size)  # warm-up: one batch per rank
    dist.barrier()
    results: list[torch.Tensor] = []
    seconds = timed(lambda: results.append(sampler.sample().samples), torch.device("cpu"))
    if dist.is_main:
        torch.save({"seconds": seconds, "samples": results[0]}, args.out)
    dist.close()


def noise_share_of_step(noise: NoiseStreamFigures, per_sample: SamplingFigures) -> float:
    """The per-sample streams' extra cost per step as a share of a DDPM step of the default U-Net (ddim-vs-ddpm's
    seconds per sample times the batch, over T)."""
    step = median(per_sample.ddpm) * noise.num_samples / per_sample.ddpm_steps
    return (median(noise.per_sample) - median(noise.one_generator)) / step


if __name__ == "__main__":
    throughput_worker()

"""Flow-matching speed, side by side in one process on one trivial network (a 1x1 convolution, so that what is
timed is the loop, not the network):

- training: ``Trainer.train()`` on ``experiment=digits_flow`` (linear path, logit-normal times) against the same step
  written as a bare PyTorch flow-matching loop (target: >= 0.95x its steps/s);
- sampling: 50 Euler steps by the project's ``Sampler`` against a bare loop, Meta's ``flow_matching`` ``ODESolver``
  (torchdiffeq's fixed-grid Euler) and diffusers' ``FlowMatchEulerDiscreteScheduler`` on the same times. All four
  start from the same per-sample noise and must return the same samples (to float32 rounding) before any ratio is
  reported; the goal is a Sampler no slower than any of them.

    python -m experiments.benchmarks.speed.flow --threads 1 --out experiments/benchmarks/speed/flow_cpu.md
    python -m experiments.benchmarks.speed.flow --quick      # toy counts, seconds: proves it works

Everything runs in fp32 (``trainer.precision=fp32``, ``sampler.precision=fp32``): the bare loops, ``ODESolver`` and
diffusers have no autocast of their own, and a trivial network gains nothing from bf16.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from experiments.benchmarks.speed.sampling import make_sampler
from experiments.benchmarks.speed.timing import interleave, median, paired_ratio, timed
from experiments.benchmarks.speed.training import BareLoop, TimedTrainer, build_parts, compose_config
from experiments.lib import finish_timing, markdown_table, parse_timing_args
from diffusion.sampling.noise import SampleNoise

FLOW = ("experiment=digits_flow", "trainer.precision=fp32", "sampler.precision=fp32", "trainer.progress=false",
        "sampler.progress=false")
TRAINING_BAR = 0.95  # the Trainer's steps/s at least this share of the bare loop's
SAMPLING_BAR = 0.95  # the Sampler's steps/s at least this share of each other loop's (no slower, within noise)
AGREEMENT = 1e-4  # largest difference allowed between the loops' samples: they integrate the same ODE


class TinyVelocity(nn.Module):
    """The trivial network: a 1x1 convolution plus a time term, ``f(x, t, y=None)`` like the project's networks."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(x) + 1e-4 * t.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))


class BareFlowLoop(BareLoop):
    """One Trainer step of ``experiment=digits_flow`` written inline: logit-normal times (SD3 eq. 19, m = 0, s = 1),
    x_t = t y + (1 - t) n, the velocity y - n as target (rectified flow), AdamW, clipping and the EMA lerp.

    ``fused=False`` is PyTorch's default AdamW as a user writes it (a loop of small operations per tensor on the
    CPU); ``fused=True`` takes the fused kernel the Trainer uses, so that the ratio to it is the loop's overhead
    alone."""

    def __init__(self, cfg, device: torch.device, model: nn.Module,  # noqa: ANN001 (a DictConfig)
                 fused: bool = False) -> None:
        self.device, self.model = device, model.to(device).train()
        self.ema_model = TinyVelocity(model.conv.in_channels).to(device).requires_grad_(False)
        self.ema_model.load_state_dict(model.state_dict())
        trainer = cfg.trainer
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=trainer.lr, betas=tuple(trainer.betas),
                                           weight_decay=trainer.weight_decay, fused=fused or None)
        self.x = build_parts(cfg).data.load().train.to(device)
        self.time_scale = float(cfg.method.num_timesteps)  # the network embeds T t
        self.batch_size, self.grad_clip = int(trainer.batch_size), float(trainer.grad_clip)
        self.ema_decay, self.epochs_done = float(trainer.ema_decay), 0

    def step(self, index: torch.Tensor) -> None:
        y = self.x[index]
        t = torch.sigmoid(torch.randn(len(index), device=self.device))  # logit-normal
        noise = torch.randn_like(y)
        t_ = t.view(-1, 1, 1, 1)
        loss = F.mse_loss(self.model(t_ * y + (1 - t_) * noise, t * self.time_scale), y - noise)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(list(self.ema_model.parameters()), list(self.model.parameters()), 1 - self.ema_decay)


@dataclass
class Figures:
    """Per-round figures of each variant: training steps/s, sampling seconds per step."""

    training: dict[str, list[float]]
    sampling: dict[str, list[float]]
    agreement: dict[str, float]  # each loop's largest difference from the Sampler's samples
    num_samples: int
    steps: int


def measure_training(rounds: int, device: torch.device) -> dict[str, list[float]]:
    """The Trainer and the bare loop on the same trivial network (same initial weights), interleaved by epoch."""
    cfg = compose_config(FLOW)
    channels = build_parts(cfg).data.sample_shape[0]
    with tempfile.TemporaryDirectory(prefix="flow_speed_") as tmp:
        trainer = TimedTrainer(cfg, Path(tmp), device, model=TinyVelocity(channels))
        bare = BareFlowLoop(cfg, device, TinyVelocity(channels))
        fused = BareFlowLoop(cfg, device, TinyVelocity(channels), fused=True)
        variants = {"trainer": trainer.epoch, "bare": bare.epoch, "bare, fused AdamW": fused.epoch}
        for warm_up in variants.values():
            warm_up()
        return interleave(variants, rounds)


def sampling_loops(num_samples: int, steps: int, device: torch.device) -> dict[str, Callable[[], torch.Tensor]]:
    """The four Euler loops over the same ``steps + 1`` times, each returning its samples."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from flow_matching.solver import ODESolver
    from flow_matching.utils import ModelWrapper

    cfg = compose_config([*FLOW, "sampler.solver=euler"])
    parts = build_parts(cfg)
    model = TinyVelocity(parts.data.sample_shape[0]).to(device).eval()
    sampler = make_sampler(cfg, model, parts.method, parts.data.sample_shape, num_samples, steps, device)
    times = parts.method.sampling_times(steps)  # 0 (noise) .. 1 (data)
    scale = float(parts.method.num_timesteps)

    def noise() -> torch.Tensor:
        return SampleNoise(sampler.seed, range(num_samples), sampler.sample_shape, device)()

    @torch.no_grad()
    def bare() -> torch.Tensor:
        x, t_batch = noise(), torch.empty(num_samples, device=device)
        for t, t_next in zip(times, times[1:]):
            x = x + (t_next - t) * model(x, t_batch.fill_(t * scale))
        return x

    class Velocity(ModelWrapper):
        def forward(self, x: torch.Tensor, t: torch.Tensor, **extras: object) -> torch.Tensor:
            return self.model(x, (t * scale).expand(x.shape[0]))

    meta = ODESolver(velocity_model=Velocity(model))
    grid = torch.tensor(times, dtype=torch.float32, device=device)

    def meta_solver() -> torch.Tensor:
        return meta.sample(x_init=noise(), step_size=None, method="euler", time_grid=grid)

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=int(scale))

    @torch.no_grad()
    def diffusers_loop() -> torch.Tensor:  # diffusers' sigma = 1 - t; its model output is d x / d sigma = -u
        scheduler.set_timesteps(sigmas=[1 - t for t in times[:-1]], device=device)
        x = noise()
        for timestep in scheduler.timesteps:
            velocity = model(x, (scale - timestep).expand(num_samples))
            x = scheduler.step(-velocity, timestep, x, return_dict=False)[0]
        return x

    return {"sampler": lambda: sampler.sample().samples, "bare": bare, "flow_matching": meta_solver,
            "diffusers": diffusers_loop}


def measure_sampling(num_samples: int, steps: int, rounds: int, device: torch.device
                     ) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Seconds per Euler step of each loop (interleaved), after checking they all return the same samples."""
    loops = sampling_loops(num_samples, steps, device)
    reference = loops["sampler"]().float().cpu()
    agreement = {name: (loop().float().cpu() - reference).abs().max().item() for name, loop in loops.items()
                 if name != "sampler"}
    for name, difference in agreement.items():
        if difference > AGREEMENT:
            raise AssertionError(f"the {name} loop's samples differ from the Sampler's by {difference:.2e}")
    timings = interleave({name: (lambda loop=loop: timed(loop, device) / steps) for name, loop in loops.items()},
                         rounds)
    return timings, agreement


def report(figures: Figures) -> tuple[list[str], list[tuple[bool, str]]]:
    """The two tables and the checks."""
    training = figures.training
    train_ratio = paired_ratio(training["trainer"], training["bare"])
    overhead_ratio = paired_ratio(training["trainer"], training["bare, fused AdamW"])
    train_rows = [[name, f"{median(values):.1f}", f"{paired_ratio(values, training['bare']):.3f}"]
                  for name, values in training.items()]
    sampling = figures.sampling
    # Speed ratio of the Sampler against a loop: the loop's seconds per step over the Sampler's (> 1: faster).
    speed = {name: paired_ratio(values, sampling["sampler"]) for name, values in sampling.items()}
    sample_rows = [[name, f"{median(values) * 1e3:.3f}", f"{speed[name]:.3f}",
                    "-" if name == "sampler" else f"{figures.agreement[name]:.1e}"]
                   for name, values in sampling.items()]
    table = [
        "Training (steps/s, medians over rounds; ratio: median of per-round ratios to the bare loop with PyTorch's "
        "default AdamW; the Trainer takes the fused AdamW kernel, so its ratio to the fused bare loop is its loop "
        "overhead alone):", "",
        *markdown_table(["loop", "steps/s", "ratio to bare"], train_rows), "",
        f"Euler-{figures.steps} sampling of {figures.num_samples} samples (ms per step; speed of the Sampler against "
        "each loop: that loop's time over the Sampler's, > 1 means the Sampler is faster):", "",
        *markdown_table(["loop", "ms / step", "Sampler speed ratio", "max |difference| from the Sampler"],
                        sample_rows),
    ]
    checks = [(train_ratio >= TRAINING_BAR,
               f"the Trainer's flow step runs at {train_ratio:.3f}x the bare loop's steps/s (bar: >= {TRAINING_BAR}); "
               f"{overhead_ratio:.3f}x the bare loop's with the same fused AdamW (the loop's own overhead)")]
    checks += [(speed[name] >= SAMPLING_BAR, f"the Sampler's Euler-{figures.steps} runs at {speed[name]:.3f}x the "
                f"speed of the {name} loop (goal: no slower; bar >= {SAMPLING_BAR} for the machine's noise)")
               for name in ("bare", "flow_matching", "diffusers")]
    return table, checks


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_timing_args(__doc__, argv, rounds=15)
    start, device, rounds = time.perf_counter(), torch.device("cpu"), args.rounds
    num_samples, steps = (16, 5) if args.quick else (500, 50)
    sampling, agreement = measure_sampling(num_samples, steps, rounds, device)
    figures = Figures(measure_training(rounds, device), sampling, agreement, num_samples, steps)
    table, checks = report(figures)
    method = ("One process, one trivial network (a 1x1 convolution), fp32; variants interleaved, one measurement "
              f"each per round, {rounds} rounds; medians and the median of per-round ratios.")
    return finish_timing(args, "Flow matching: training step and Euler sampling against bare loops and libraries",
                         method, table, checks, start, "experiments.benchmarks.speed.flow", argv)


if __name__ == "__main__":
    sys.exit(main())

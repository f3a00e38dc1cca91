"""Training figures: the Trainer against a bare PyTorch loop, bf16 against fp32, compile on against off,
and the model FLOP/s reached as a fraction of the machine's matmul peak.

All variants train the default run's components (composed from ``conf/`` exactly as ``run.py`` composes them)
on the same data, batch and optimizer settings, and are interleaved epoch by epoch (see
:func:`~experiments.benchmarks.speed.timing.interleave`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from diffusion.app import build
from diffusion.storage.file_manager import FileManager
from diffusion.loggers import NullLogger
from diffusion.methods.base import BaseMethod
from diffusion.tasks.components import Components
from diffusion.tasks.summary import flop_counter
from diffusion.runtime.devices import Precision, autocast, resolve_precision
from diffusion.training.trainer import Trainer
from diffusion.training.optimizer_step import fused_supported
from experiments.benchmarks.speed.timing import interleave, matmul_flops_per_second, median, synchronize
from experiments.lib import ROOT

CONF_DIR = ROOT / "conf"


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The default run's config (``python run.py`` with ``overrides``), without an evaluator: ``evaluator=none``
    replaces the whole block after composing, since a preset's own evaluator keys (experiment=mnist's num_samples)
    do not fit the none evaluator."""
    cfg = compose_run_config(overrides)
    with open_dict(cfg):  # data without an evaluator of its own (synthetic) composes none at all
        cfg.evaluator = compose_run_config(["evaluator=none"]).evaluator
    return cfg


def compose_run_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The config ``python run.py <overrides>`` composes, evaluator included (unresolved)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def training_batch(parts: Components, size: int) -> torch.Tensor:
    """The first ``size`` training rows, made ready for the model as the Trainer makes them (uint8 MNIST rows become
    floats in [-1, 1]; no flips)."""
    return parts.data.prepare_batch(parts.data.load().train[:size])


def build_parts(cfg: DictConfig, seed: int = 0) -> Components:
    """The components of ``cfg``, built as ``run.py`` builds them; the seed gives every variant the same initial
    weights."""
    torch.manual_seed(seed)
    return build(cfg)


def optimizer_step(parts: Components, batch_size: int, device: torch.device,
                   precision: Precision = "fp32") -> Callable[[], None]:
    """One AdamW step of ``parts``' network on the first ``batch_size`` training rows (with their class labels where
    the network takes them): the loss under ``precision``'s autocast, backward, update. What differs between
    backbones and precisions; the Trainer around it is the same for all."""
    model, method = parts.model.to(device).train(), parts.method.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x0 = training_batch(parts, batch_size).to(device)
    labels = parts.data.load().train_labels
    kwargs = {"y": labels[:batch_size].to(device)} if getattr(model, "num_classes", 0) and labels is not None else {}

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            loss = method.compute_loss(model, x0, **kwargs)
        loss.backward()
        optimizer.step()

    return step


class TimedTrainer:
    """Drives the real :meth:`Trainer.train`, one more epoch per call, and times the training part of it.

    ``train()`` also validates and checkpoints after every epoch; steps/s is about the loop of batches, steps,
    EMA updates, logging and stop checks, so the timer wraps this instance's ``_train_epoch`` (that loop, as
    ``train()`` calls it) instead of the whole ``train()``.
    """

    def __init__(self, cfg: DictConfig, run_dir: Path, device: torch.device, model: torch.nn.Module | None = None,
                 **trainer_kwargs: Any) -> None:
        parts = build_parts(cfg)
        self.trainer: Trainer = parts.make_trainer(
            model=parts.model if model is None else model, method=parts.method, data=parts.data,
            file_manager=FileManager(run_dir), logger=NullLogger(), epochs=1, device=str(device), progress=False,
            **trainer_kwargs,
        )
        self.epoch_seconds = 0.0
        train_epoch = self.trainer._train_epoch

        def timed_train_epoch(epoch: int) -> float:
            start = time.perf_counter()
            mean_loss = train_epoch(epoch)
            synchronize(self.trainer.device)
            self.epoch_seconds = time.perf_counter() - start
            return mean_loss

        self.trainer._train_epoch = timed_train_epoch  # type: ignore[method-assign]

    def epoch(self) -> float:
        """Train one more epoch through ``train()``; returns its optimizer steps per second."""
        first_step = self.trainer.state.global_step
        self.trainer.epochs = self.trainer.state.epoch + 1
        self.trainer.train()
        return (self.trainer.state.global_step - first_step) / self.epoch_seconds


class BareLoop:
    """The work of one Trainer step written inline in plain PyTorch: the baseline of the trainer-overhead figure.

    Same model (same initial weights), data, batches, AdamW settings and kernel (fused where the Trainer fuses it:
    this figure is the loop's overhead, not the optimizer's), autocast precision, gradient clipping and EMA lerp
    as the Trainer; no LR schedule, logging, loss bookkeeping, checkpoints or stop checks.
    """

    def __init__(self, cfg: DictConfig, device: torch.device, model: torch.nn.Module | None = None) -> None:
        parts = build_parts(cfg)
        trainer_cfg = cfg.trainer
        self.device = device
        self.model = (parts.model if model is None else model).to(device).train()
        self.ema_model = copy.deepcopy(self.model).requires_grad_(False)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=trainer_cfg.lr, betas=tuple(trainer_cfg.betas),
            weight_decay=trainer_cfg.weight_decay, fused=fused_supported(list(self.model.parameters())) or None,
        )
        self.x = parts.data.load().train.to(device)  # (N, C, H, W)
        self.num_timesteps = parts.method.num_timesteps
        # q(x_t | x_0) coefficients (Ho et al. eq. 4), float32 on the device once.
        self.sqrt_abar = parts.method.sqrt_alphas_cumprod.float().to(device)
        self.sqrt_one_minus_abar = parts.method.sqrt_one_minus_alphas_cumprod.float().to(device)
        self.batch_size, self.grad_clip = int(trainer_cfg.batch_size), float(trainer_cfg.grad_clip)
        self.ema_decay = float(trainer_cfg.ema_decay)
        self.precision = resolve_precision(trainer_cfg.precision, device, "trainer.precision")  # as the Trainer
        self.epochs_done = 0

    def epoch(self) -> float:
        """One epoch over a fresh random order; returns optimizer steps per second."""
        self.epochs_done += 1
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(self.epochs_done)
        batches = torch.randperm(len(self.x), generator=generator).to(self.device).split(self.batch_size)
        for index in batches:
            self.step(index)
        synchronize(self.device)
        return len(batches) / (time.perf_counter() - start)

    def step(self, index: torch.Tensor) -> None:
        x0 = self.x[index]  # (B, C, H, W)
        t = torch.randint(0, self.num_timesteps, (len(index),), device=self.device)
        noise = torch.randn_like(x0)
        x_t = self.sqrt_abar[t].view(-1, 1, 1, 1) * x0 + self.sqrt_one_minus_abar[t].view(-1, 1, 1, 1) * noise
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.precision):
            prediction = self.model(x_t, t)
        loss = F.mse_loss(prediction.float(), noise)  # epsilon prediction, Ho et al. eq. 14
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(list(self.ema_model.parameters()), list(self.model.parameters()), 1 - self.ema_decay)


def training_flops_per_sample(cfg: DictConfig, device: torch.device, precision: Precision) -> float:
    """Model FLOPs (matmuls, convolutions, attention) of one training step, forward and backward, per sample."""
    parts = build_parts(cfg)
    model, method = parts.model.to(device).train(), parts.method.to(device)
    x0 = training_batch(parts, int(cfg.trainer.batch_size)).to(device)
    return step_flops_per_sample(model, method, x0, device, precision)


def step_flops_per_sample(model: torch.nn.Module, method: BaseMethod, x0: torch.Tensor, device: torch.device,
                          precision: Precision) -> float:
    """Model FLOPs of one ``method.compute_loss`` forward and backward on the batch ``x0``, per sample."""
    with flop_counter() as counter:
        with autocast(device, precision):
            loss = method.compute_loss(model, x0)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(x0)


@dataclass
class TrainingFigures:
    """Per-round steps/s of each variant (same rounds, same order), and what derives from them."""

    trainer: list[float]
    bare: list[float]
    trainer_fp32: list[float]
    compiled: list[float] | None
    compile_seconds: float | None
    compile_cache: str | None  # inductor's FX-graph cache hits and misses while compiling: cold or warm
    peak_bf16: list[float]
    peak_fp32: list[float]
    flops_per_sample: float
    samples_per_step: float
    precision: str
    batch_size: int


def measure_training(
    cfg: DictConfig, device: torch.device, run_dir: Path, rounds: int, with_compile: bool, matmul_size: int
) -> TrainingFigures:
    """Trainer overhead, precision, compile and FLOP/s, all interleaved in one loop (after one warm-up epoch each)."""
    precision = resolve_precision(cfg.trainer.precision, device, "trainer.precision")  # auto: bf16 or fp32 here
    trainer = TimedTrainer(cfg, run_dir / "trainer", device)
    fp32 = TimedTrainer(cfg, run_dir / "fp32", device, precision="fp32")
    bare = BareLoop(cfg, device)
    variants = {"trainer": trainer.epoch, "bare": bare.epoch, "fp32": fp32.epoch}
    compile_seconds, compile_cache = None, None
    if with_compile:
        compiled = TimedTrainer(cfg, run_dir / "compiled", device, compile=True)
        compiled.epoch()  # compiles (twice when the epoch's last batch is smaller)
        compile_seconds, compile_cache = compiled.epoch_seconds, _inductor_cache_use()
        variants["compiled"] = compiled.epoch
    for warm_up in variants.values():
        warm_up()
    variants["peak_bf16"] = lambda: matmul_flops_per_second(matmul_size, torch.bfloat16, device)
    variants["peak_fp32"] = lambda: matmul_flops_per_second(matmul_size, torch.float32, device)
    runs = interleave(variants, rounds)
    if with_compile:  # the compile epoch's time beyond a steady compiled epoch is the compile cost
        steady = trainer.trainer.steps_per_epoch / median(runs["compiled"])
        compile_seconds = max(0.0, (compile_seconds or 0.0) - steady)
    return TrainingFigures(
        trainer=runs["trainer"], bare=runs["bare"], trainer_fp32=runs["fp32"], compiled=runs.get("compiled"),
        compile_seconds=compile_seconds, compile_cache=compile_cache,
        peak_bf16=runs["peak_bf16"], peak_fp32=runs["peak_fp32"],
        flops_per_sample=training_flops_per_sample(cfg, device, precision),
        samples_per_step=len(trainer.trainer.splits.train) / trainer.trainer.steps_per_epoch,
        precision=precision, batch_size=int(cfg.trainer.batch_size),
    )


def _inductor_cache_use() -> str:
    """How many compiled graphs came from inductor's on-disk cache: a cold compile takes minutes, a warm one
    seconds, so the compile time means little without it."""
    from torch._dynamo.utils import counters

    inductor = counters["inductor"]
    return f"inductor cache {inductor['fxgraph_cache_hit']} hits / {inductor['fxgraph_cache_miss']} misses"

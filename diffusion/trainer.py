"""The training loop: batches, optimizer step, EMA, validation, checkpoint, log — one call each per epoch."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ContextManager, Literal, NamedTuple

import torch
from torch import nn
from tqdm.auto import tqdm

from diffusion.data.base import BaseData, DataSplits
from diffusion.ema import EMA
from diffusion.file_manager import FileManager, load_checkpoint
from diffusion.loggers.base import BaseLogger
from diffusion.methods.base import BaseMethod
from diffusion.seeding import rng_state, set_rng_state
from diffusion.validation import ConfigError, check_choice, check_float, check_int, check_positive

Precision = Literal["fp32", "bf16", "fp16"]
LRSchedule = Literal["constant", "cosine"]
# Extra per-epoch work (evaluation, sample grids): called after validation, returns metrics to log and monitor.
EpochHook = Callable[["Trainer", int], dict[str, float] | None]


class LossHistories(NamedTuple):
    """Per-epoch mean training loss and validation loss, across all sessions of the run."""

    train: list[float]
    val: list[float]


@dataclass
class TrainState:
    """Everything that changes during training and must survive a resume."""

    epoch: int = 0  # completed epochs
    global_step: int = 0
    best_val_loss: float = math.inf
    best_metric: float = math.inf
    train_losses: list[float] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU.

    Raises:
        ConfigError: ``cuda`` requested on a machine without CUDA.
    """
    check_choice(device, "trainer.device", ("auto", "cpu", "cuda"))
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA device is available; use trainer.device=auto or cpu")
    return torch.device(device)


def autocast(device: torch.device, precision: Precision) -> ContextManager[Any]:
    """Mixed-precision context for forward passes (fp32: none)."""
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


class Trainer:
    """Trains ``model`` on ``data`` under ``method``'s loss with AdamW, warmup + constant/cosine LR, gradient
    clipping, optional autocast and an EMA of the weights; validates every epoch with fixed timesteps and
    noise; keeps ``last``/``best`` checkpoints through ``file_manager``; reports to ``logger``.

    Args:
        model, method, data, file_manager, logger: the components it drives.
        epochs: total epochs of the run (a resumed run continues up to this number).
        lr: peak learning rate. batch_size: samples per optimizer step.
        weight_decay: AdamW decoupled weight decay. betas: AdamW betas.
        warmup_steps: linear LR warmup from 0. lr_schedule: ``constant`` or ``cosine`` (to ``min_lr_ratio * lr``).
        grad_clip: max global gradient norm (0 disables).
        precision: ``fp32``, ``bf16`` (autocast, any device) or ``fp16`` (CUDA only, with gradient scaling).
        ema_decay: EMA decay; validation loss and sampling use the EMA weights.
        device: ``auto``, ``cpu`` or ``cuda``.
        monitor: metric that picks ``best`` (``val_loss`` or one an epoch hook returns, lower is better).
        run_config: the resolved run config, stored in every checkpoint.
        epoch_hooks: extra per-epoch work, see :data:`EpochHook`.
        progress: show a progress bar. log_every_n_steps: step-level logging interval.
        val_seed: seed of the fixed validation timesteps and noise.

    Raises:
        ConfigError: for any out-of-range or unknown argument, naming its ``trainer.*`` key.
    """

    def __init__(
        self,
        model: nn.Module,
        method: BaseMethod,
        data: BaseData,
        file_manager: FileManager,
        logger: BaseLogger,
        *,
        epochs: int,
        lr: float,
        batch_size: int,
        weight_decay: float = 0.0,
        betas: Sequence[float] = (0.9, 0.999),
        warmup_steps: int = 0,
        lr_schedule: LRSchedule = "constant",
        min_lr_ratio: float = 0.0,
        grad_clip: float = 1.0,
        precision: Precision = "fp32",
        ema_decay: float = 0.999,
        device: str = "auto",
        monitor: str = "val_loss",
        run_config: dict[str, Any] | None = None,
        epoch_hooks: Sequence[EpochHook] = (),
        progress: bool = True,
        log_every_n_steps: int = 50,
        val_seed: int = 1234,
    ) -> None:
        self.epochs = check_int(epochs, "trainer.epochs", minimum=1)
        self.lr = check_positive(lr, "trainer.lr")
        self.batch_size = check_int(batch_size, "trainer.batch_size", minimum=1)
        self.warmup_steps = check_int(warmup_steps, "trainer.warmup_steps", minimum=0)
        self.lr_schedule = check_choice(lr_schedule, "trainer.lr_schedule", ("constant", "cosine"))
        self.min_lr_ratio = check_float(min_lr_ratio, "trainer.min_lr_ratio", 0.0, 1.0)
        self.grad_clip = check_float(grad_clip, "trainer.grad_clip", minimum=0.0)
        self.precision = check_choice(precision, "trainer.precision", ("fp32", "bf16", "fp16"))
        self.device = resolve_device(device)
        if self.precision == "fp16" and self.device.type != "cuda":
            raise ConfigError("trainer.precision=fp16 needs CUDA; on CPU use trainer.precision=bf16 or fp32")
        self.monitor = monitor
        self.run_config = run_config or {}
        self.epoch_hooks = list(epoch_hooks)
        self.progress = progress
        self.log_every_n_steps = check_int(log_every_n_steps, "trainer.log_every_n_steps", minimum=1)

        self.model = model.to(self.device)
        self.method = method.to(self.device)
        self.data = data
        self.file_manager = file_manager
        self.logger = logger
        self.ema = EMA(self.model, ema_decay).to(self.device)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=self.lr,
            betas=tuple(betas),  # type: ignore[arg-type]
            weight_decay=check_float(weight_decay, "trainer.weight_decay", minimum=0.0),
        )
        splits = data.load()
        self.splits = DataSplits(*(None if t is None else t.to(self.device) for t in _fields(splits)))
        self.steps_per_epoch = math.ceil(len(self.splits.train) / self.batch_size)
        self.total_steps = self.epochs * self.steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.state = TrainState()
        self._val_t, self._val_noise = self._fixed_validation_draws(val_seed)

    # ----------------------------------------------------------------------------------------------------
    # The loop
    # ----------------------------------------------------------------------------------------------------
    def train(self, resume_from: str | Path | None = None) -> dict[str, float]:
        """Train up to ``epochs`` (continuing from ``resume_from`` if given); returns the final metrics."""
        if resume_from is not None:
            self._resume_training(resume_from)
        self.logger.log(
            f"training {_count_parameters(self.model):,} parameters on {self.device} ({self.precision}); "
            f"{len(self.splits.train)} train / {len(self.splits.val)} val samples, "
            f"{self.steps_per_epoch} steps per epoch, epochs {self.state.epoch + 1}..{self.epochs}"
        )
        while self.state.epoch < self.epochs:
            epoch = self.state.epoch + 1
            start = time.perf_counter()
            train_loss = self._train_epoch(epoch)
            val_loss = self.validate()
            extra = self._run_epoch_hooks(epoch)
            self._record_epoch(train_loss, val_loss, extra, seconds=time.perf_counter() - start)
            self._checkpoint()
            self.logger.log(self.state.metrics, step=self.state.global_step)
        self.logger.log_loss_curve(*self.get_loss_histories())
        return self.summary()

    def _train_epoch(self, epoch: int) -> float:
        self.model.train()
        order = torch.randperm(len(self.splits.train), device=self.device)
        batches = order.split(self.batch_size)
        bar = tqdm(batches, desc=f"epoch {epoch}/{self.epochs}", disable=not self.progress, leave=False)
        total = torch.zeros((), device=self.device)
        for index in bar:
            loss = self._train_step(index)
            total += loss.detach() * len(index)
            self.ema.update(self.model)
            if self.state.global_step % self.log_every_n_steps == 0:
                step_loss = loss.item()
                bar.set_postfix(loss=f"{step_loss:.4f}")
                self.logger.log({"train/loss_step": step_loss, "lr": self.current_lr}, step=self.state.global_step)
        return total.item() / len(self.splits.train)

    def _train_step(self, index: torch.Tensor) -> torch.Tensor:
        x0 = self.splits.train[index]
        with autocast(self.device, self.precision):
            loss = self.method.compute_loss(self.model, x0)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.state.global_step += 1
        return loss

    @torch.no_grad()
    def validate(self, batch_size: int = 512) -> float:
        """Mean loss of the EMA model on the validation split, at fixed timesteps and noise."""
        model = self.ema.shadow
        val = self.splits.val
        total = 0.0
        for start in range(0, len(val), batch_size):
            chunk = slice(start, start + batch_size)
            with autocast(self.device, self.precision):
                loss = self.method.compute_loss(model, val[chunk], t=self._val_t[chunk], noise=self._val_noise[chunk])
            total += loss.item() * len(val[chunk])
        return total / len(val)

    def _run_epoch_hooks(self, epoch: int) -> dict[str, float]:
        extra: dict[str, float] = {}
        for hook in self.epoch_hooks:
            extra.update(hook(self, epoch) or {})
        return extra

    def _record_epoch(self, train_loss: float, val_loss: float, extra: dict[str, float], seconds: float) -> None:
        state = self.state
        state.epoch += 1
        state.train_losses.append(train_loss)
        state.val_losses.append(val_loss)
        state.best_val_loss = min(state.best_val_loss, val_loss)
        state.metrics = {
            "epoch": state.epoch,
            "train/loss": train_loss,
            "val/loss": val_loss,
            "lr": self.current_lr,
            "epoch_seconds": seconds,
            "samples_per_second": len(self.splits.train) / seconds,
            **extra,
        }

    def _checkpoint(self) -> None:
        value = self._monitored_value()
        is_best = value is not None and value < self.state.best_metric
        if is_best:
            self.state.best_metric = value  # type: ignore[assignment]
        self.state.metrics["best/" + self.monitor] = self.state.best_metric
        self.file_manager.save(self.checkpoint_state(), is_best=is_best)

    def _monitored_value(self) -> float | None:
        if self.monitor in ("val_loss", "val/loss"):
            return self.state.val_losses[-1]
        value = self.state.metrics.get(self.monitor)
        if value is None:
            return None  # e.g. an evaluation metric computed every N epochs only
        return float(value)

    # ----------------------------------------------------------------------------------------------------
    # State
    # ----------------------------------------------------------------------------------------------------
    def checkpoint_state(self) -> dict[str, Any]:
        """The one checkpoint dict (see :data:`diffusion.file_manager.CHECKPOINT_KEYS`)."""
        state = self.state
        return {
            "epoch": state.epoch,
            "global_step": state.global_step,
            "model_state_dict": self.model.state_dict(),
            "ema_state_dict": self.ema.state_dict(),
            "optimizer_state_dict": self.optimizer.state_dict(),
            "scheduler_state_dict": self.scheduler.state_dict(),
            "scaler_state_dict": self.scaler.state_dict(),
            "metrics": dict(state.metrics),
            "best_val_loss": state.best_val_loss,
            "best_metric": state.best_metric,
            "monitor": self.monitor,
            "training_loss_history": list(state.train_losses),
            "val_loss_history": list(state.val_losses),
            "config": self.run_config,
            "rng_state": rng_state(),
        }

    def _resume_training(self, checkpoint: str | Path) -> None:
        """Restore weights, EMA, optimizer, LR schedule, counters, histories and RNG states."""
        ckpt = load_checkpoint(checkpoint, map_location=self.device)
        self.model.load_state_dict(ckpt["model_state_dict"])
        self.ema.load_state_dict(ckpt["ema_state_dict"])
        self.optimizer.load_state_dict(ckpt["optimizer_state_dict"])
        self.scheduler.load_state_dict(ckpt["scheduler_state_dict"])
        if "scaler_state_dict" in ckpt:
            self.scaler.load_state_dict(ckpt["scaler_state_dict"])
        self.state = TrainState(
            epoch=int(ckpt["epoch"]),
            global_step=int(ckpt["global_step"]),
            best_val_loss=float(ckpt["best_val_loss"]),
            best_metric=float(ckpt.get("best_metric", ckpt["best_val_loss"])),
            train_losses=list(ckpt["training_loss_history"]),
            val_losses=list(ckpt["val_loss_history"]),
            metrics=dict(ckpt["metrics"]),
        )
        set_rng_state(ckpt["rng_state"])
        self.logger.log(f"resumed from {checkpoint} at epoch {self.state.epoch}, step {self.state.global_step}")

    def get_loss_histories(self) -> LossHistories:
        return LossHistories(list(self.state.train_losses), list(self.state.val_losses))

    def summary(self) -> dict[str, float]:
        return {
            "epochs": self.state.epoch,
            "global_step": self.state.global_step,
            "final_train_loss": self.state.train_losses[-1] if self.state.train_losses else math.nan,
            "final_val_loss": self.state.val_losses[-1] if self.state.val_losses else math.nan,
            "best_val_loss": self.state.best_val_loss,
            "best_" + self.monitor.replace("/", "_"): self.state.best_metric,
        }

    @property
    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _lr_factor(self, step: int) -> float:
        """Linear warmup to 1, then constant or cosine decay to ``min_lr_ratio``."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.lr_schedule == "constant":
            return 1.0
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def _fixed_validation_draws(self, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Timesteps and noise for validation, drawn once from their own generator so that epochs compare."""
        generator = torch.Generator().manual_seed(seed)
        val = self.splits.val
        t = torch.randint(0, self.method.num_timesteps, (len(val),), generator=generator)
        noise = torch.randn(val.shape, generator=generator, dtype=val.dtype)
        return t.to(self.device), noise.to(self.device)


def _fields(splits: DataSplits) -> tuple[torch.Tensor | None, ...]:
    return (splits.train, splits.val, splits.train_labels, splits.val_labels)


def _count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

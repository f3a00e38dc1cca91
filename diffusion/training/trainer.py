"""The training loop: batches, optimizer step, EMA, validate, checkpoint, log — one call each per epoch.

Resume is exact: an epoch's data order is a pure function of ``(seed, epoch)``, the position inside the epoch
follows from the step counter, and checkpoints carry the RNG states, optimizer, LR schedule, EMA and the
partial epoch's loss sum. A run killed at any step and resumed ends bit for bit where the uninterrupted run
ends (CPU, same thread count).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from torch import nn
from tqdm.auto import tqdm

from diffusion.data.base import BaseData, DataSplits, batch_generator_seed
from diffusion.loggers.base import BaseLogger
from diffusion.loggers.naming import is_val_loss
from diffusion.methods.base import BaseMethod
from diffusion.runtime.checks import ConfigError, check_bool, check_float, check_int, check_positive
from diffusion.runtime.devices import Precision, autocast, resolve_device, resolve_precision, to_device
from diffusion.runtime.distributed import DistributedContext
from diffusion.runtime.seeding import rng_state
from diffusion.runtime.signals import Interrupted, StopSignals
from diffusion.storage import checkpoint
from diffusion.storage.checkpoint import TrainState
from diffusion.storage.file_manager import FileManager
from diffusion.training.ema import make_ema
from diffusion.training.epoch_batches import EpochBatches, check_batch_split
from diffusion.training.lr_schedule import LRSchedule, WarmupThenDecay
from diffusion.training.optimizer_step import OptimizerStep, wrap_for_training
from diffusion.training.run_checkpoints import RunCheckpoints
from diffusion.training.validation_loss import FixedDrawValidation

# Extra per-epoch work (evaluation, sample grids): called as ``hook(epoch, global_step, ema_model)`` after
# validation on rank 0; returns metrics to log and monitor, or None. Hooks get their sampler and logger when they
# are made, and the EMA weights of the moment when called.
EpochHook = Callable[[int, int, nn.Module], dict[str, float] | None]
# Called as ``hook(epoch, metrics)`` on rank 0 after the epoch's checkpoint is written (e.g. a pruning search
# reporting the epoch's value; it may raise to stop a hopeless run, which keeps its checkpoint).
EpochEndHook = Callable[[int, Mapping[str, float]], None]


class LossHistories(NamedTuple):
    """Per-epoch mean training loss and validation loss, across all sessions of the run."""

    train: list[float]
    val: list[float]


class TrainingDiverged(RuntimeError):
    """A non-finite loss; the last good checkpoint is kept."""


class Trainer:
    """Trains ``model`` on ``data`` under ``method``'s loss.

    AdamW with warmup and a constant or cosine LR, an EMA that validation and sampling use, validation at fixed
    timesteps and noise, ``last``/``best`` checkpoints, data-parallel under ``torchrun``. ``seed`` fixes the
    per-epoch data order; ``run_config`` is stored in checkpoints. Settings: see conf/trainer/default.yaml.

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
        max_steps: int | None = None,
        weight_decay: float = 0.0,
        betas: Sequence[float] = (0.9, 0.999),
        warmup_steps: int = 0,
        lr_schedule: LRSchedule = "constant",
        min_lr_ratio: float = 0.0,
        grad_clip: float = 1.0,
        accumulate_grad_batches: int = 1,
        precision: Precision = "fp32",
        ema_decay: float = 0.999,
        ema: Literal["ema", "posthoc"] = "ema",
        ema_stds: Sequence[float] = (0.05, 0.10),
        ema_snapshot_every: int | None = None,
        device: str = "auto",
        monitor: str = "val_loss",
        checkpoint_every_n_steps: int = 0,
        skip_nonfinite: bool = False,
        compile: bool = False,
        channels_last: bool = False,
        seed: int = 0,
        run_config: dict[str, Any] | None = None,
        epoch_hooks: Sequence[EpochHook] = (),
        epoch_end_hooks: Sequence[EpochEndHook] = (),
        distributed: DistributedContext | None = None,
        progress: bool = True,
        log_every_n_steps: int = 50,
        val_seed: int = 1234,
    ) -> None:
        self.epochs = check_int(epochs, "trainer.epochs", minimum=1)
        self.max_steps = None if max_steps is None else check_int(max_steps, "trainer.max_steps", minimum=1)
        self.lr = check_positive(lr, "trainer.lr")
        self.batch_size = check_int(batch_size, "trainer.batch_size", minimum=1)
        self.grad_clip = check_float(grad_clip, "trainer.grad_clip", minimum=0.0)
        self.accumulate = check_int(accumulate_grad_batches, "trainer.accumulate_grad_batches", minimum=1)
        self.checkpoint_every_n_steps = check_int(checkpoint_every_n_steps, "trainer.checkpoint_every_n_steps", 0)
        self.log_every_n_steps = check_int(log_every_n_steps, "trainer.log_every_n_steps", minimum=1)
        self.seed = check_int(seed, "seed")
        self.dist = distributed or DistributedContext()
        check_batch_split(self.batch_size, self.accumulate, self.dist)
        self.device = self.dist.device(resolve_device(device))
        self.precision = resolve_precision(precision, self.device, "trainer.precision")
        if self.precision == "fp16" and self.device.type != "cuda":
            raise ConfigError("trainer.precision=fp16 needs CUDA; on CPU use trainer.precision=bf16 or fp32")
        self.monitor = monitor
        self.skip_nonfinite = check_bool(skip_nonfinite, "trainer.skip_nonfinite")
        self.channels_last = check_bool(channels_last, "trainer.channels_last")
        progress = check_bool(progress, "trainer.progress")
        self.run_config = run_config or {}
        self.epoch_hooks = list(epoch_hooks)
        self.epoch_end_hooks = list(epoch_end_hooks)
        self.progress = progress and self.dist.is_main
        self.method, self.data, self.file_manager, self.logger = method.to(self.device), data, file_manager, logger

        memory_format = torch.channels_last if channels_last else torch.preserve_format
        self.model = model.to(self.device, memory_format=memory_format)
        self.ema, self.ema_snapshot_every = make_ema(self.model, ema, ema_decay, ema_stds, ema_snapshot_every)
        self.ema.to(self.device)
        self.train_model = wrap_for_training(self.model, self.dist, self.device, check_bool(compile, "trainer.compile"))
        self._load_data(val_seed)
        self.lr_factor = WarmupThenDecay(warmup_steps, self.total_steps, lr_schedule, min_lr_ratio)
        self.trainable: nn.Module | None = getattr(method, "trainable", None)  # REPA's projector, if any
        self.step = OptimizerStep(self.model, self.train_model, lr=self.lr, betas=betas, weight_decay=weight_decay,
                                  grad_clip=self.grad_clip, lr_factor=self.lr_factor, precision=self.precision,
                                  trainable=self.trainable, dist=self.dist)
        self.optimizer, self.scheduler, self.scaler = self.step.optimizer, self.step.scheduler, self.step.scaler
        self.state = TrainState()
        self._signals = StopSignals()
        self.checkpoints = RunCheckpoints(file_manager, self.dist, logger)

    def _load_data(self, val_seed: int) -> None:
        """The splits on the device, this rank's batches, the run's length in steps and the fixed validation."""
        splits = self.data.load()
        tensors = (splits.train, splits.val, splits.train_labels, splits.val_labels)
        self.splits = DataSplits(*(None if t is None else to_device(t, self.device) for t in tensors))
        self.conditional = getattr(self.model, "num_classes", 0) > 0 and self.splits.train_labels is not None
        self.epoch_batches = EpochBatches(len(self.splits.train), self.batch_size, self.dist, self.seed, self.device)
        self.steps_per_epoch = self.epoch_batches.steps_per_epoch
        if self.max_steps is not None:
            self.epochs = math.ceil(self.max_steps / self.steps_per_epoch)
        self.total_steps = self.max_steps or self.epochs * self.steps_per_epoch
        self.validation = FixedDrawValidation(
            self.method, self.data, self.splits.val, self.splits.val_labels if self.conditional else None,
            val_seed, self.precision,
        )

    def _maybe_snapshot_ema(self) -> None:
        every = self.ema_snapshot_every
        if every and self.state.global_step % every == 0 and self.dist.is_main:
            self.file_manager.save_ema_snapshot(self.ema.snapshot())  # type: ignore[operator]

    def train(self) -> dict[str, float]:
        """Train up to ``epochs`` (or ``max_steps``), continuing a state put back by :meth:`restore`; returns the final
        metrics.

        Raises:
            TrainingDiverged: a non-finite loss without ``skip_nonfinite``.
            diffusion.runtime.signals.Interrupted: SIGTERM/SIGINT (after saving ``last``).
        """
        self.logger.log(self._banner())
        self.checkpoints.continue_run(self.state, self.seed)
        with self._signals:
            while self.state.epoch < self.epochs and not self._reached_max_steps():
                epoch = self.state.epoch + 1
                start = time.perf_counter()
                train_loss = self._train_epoch(epoch)
                val_loss = self.validate()
                extra = self._run_epoch_hooks(epoch)
                self._record_epoch(train_loss, val_loss, extra, seconds=time.perf_counter() - start)
                self._checkpoint()
                self.logger.log(self.state.metrics, step=self.state.global_step)
                for hook in self.epoch_end_hooks if self.dist.is_main else ():
                    hook(epoch, self.state.metrics)
        if self.dist.any(self._signals.received is not None, self.device):  # came after the last step's check
            raise self._interrupted()  # the last epoch's checkpoint holds this state
        self.logger.log_loss_curve(*self.get_loss_histories())
        return self.summary()

    def _train_epoch(self, epoch: int) -> float:
        self.train_model.train()
        batches = self.epoch_batches(epoch)
        first = self.state.global_step - (epoch - 1) * self.steps_per_epoch  # > 0 after a mid-epoch resume
        bar = tqdm(total=len(batches), initial=first, desc=f"epoch {epoch}/{self.epochs}",
                   disable=not self.progress, leave=False)
        for index in batches[first:]:
            if self._reached_max_steps():
                break
            loss = self._train_step(index)
            self.ema.update(self.model, self.state.global_step)
            self._maybe_snapshot_ema()
            bar.update(1)
            self._log_step(loss, bar)
            self._maybe_stop_or_checkpoint()
        bar.close()
        mean = self.state.epoch_loss_sum / max(1, self.state.epoch_samples)
        self.state.epoch_loss_sum, self.state.epoch_samples = 0.0, 0
        return mean

    def _train_step(self, index: torch.Tensor) -> torch.Tensor:
        """One optimizer step over ``index`` in ``accumulate`` micro-batches; returns the mean loss."""
        micro_batches = index.chunk(self.accumulate) if self.accumulate > 1 else (index,)
        micro_losses = [partial(self._loss, micro, i) for i, micro in enumerate(micro_batches)]
        total = self.step.backward(micro_losses, self.device)
        mean_loss = float(self.dist.mean(total))  # one all-reduce and one host sync per step
        if not self._finite(mean_loss):
            return total
        self.step.apply()
        self.state.global_step += 1
        self.state.epoch_loss_sum += mean_loss * len(index) * self.dist.world_size
        self.state.epoch_samples += len(index) * self.dist.world_size
        return total

    def _finite(self, loss: float) -> bool:
        """True for a finite loss (the mean over ranks); otherwise stop, or skip the step when configured."""
        if math.isfinite(loss):
            return True
        step = self.state.global_step + 1
        if not self.skip_nonfinite:
            raise TrainingDiverged(
                f"loss became {loss} at step {step} (epoch {self.state.epoch + 1}); {self.checkpoints.kept()}; "
                "lower trainer.lr, or set trainer.skip_nonfinite=true to skip such batches"
            )
        self.step.skip()
        self.state.skipped_steps += 1
        self.state.global_step += 1  # the step is spent (keeps the data position and LR schedule aligned)
        self.logger.log(f"skipped step {step}: non-finite loss ({self.state.skipped_steps} skipped so far)")
        return False

    def _loss(self, index: torch.Tensor, micro_batch: int) -> torch.Tensor:
        # A batch's random draws (flips, latents' z) are seeded by (seed, step, micro-batch, rank), so a resumed run
        # draws the same ones. Read before the step counter moves on.
        seed = (batch_generator_seed(self.seed, self.state.global_step, micro_batch, self.dist.rank)
                if self.data.random_batches else None)  # the hash costs a small network's step a few per cent
        with autocast(self.device, self.precision):
            return self.method.compute_loss(self.train_model, self._inputs(index, seed), **self._labels(index),
                                            **self.data.loss_inputs(index, seed))

    def _inputs(self, index: torch.Tensor, seed: int | None) -> torch.Tensor:
        x0 = self.data.prepare_batch(self.splits.train[index], seed)  # uint8 data sets convert here, per batch
        return x0.contiguous(memory_format=torch.channels_last) if self.channels_last and x0.dim() == 4 else x0

    def _labels(self, index: torch.Tensor) -> dict[str, Any]:
        if not self.conditional:
            return {}
        # The null label is passed explicitly: a DDP- or compile-wrapped model hides ``num_classes``.
        return {"y": self.splits.train_labels[index], "null_label": self.model.num_classes}  # type: ignore[index]

    def _log_step(self, loss: torch.Tensor, bar: Any) -> None:
        if self.state.global_step % self.log_every_n_steps:
            return
        step_loss = float(loss)
        bar.set_postfix(loss=f"{step_loss:.4f}")
        metrics = {"train/loss_step": step_loss, "lr": self.current_lr}
        if self.step.grad_norm is not None:
            metrics["grad_norm"] = float(self.step.grad_norm)  # before clipping
        self.logger.log(metrics, step=self.state.global_step)

    def _reached_max_steps(self) -> bool:
        return self.max_steps is not None and self.state.global_step >= self.max_steps

    def _maybe_stop_or_checkpoint(self) -> None:
        if self.dist.any(self._signals.received is not None, self.device):
            self._save(is_best=False, periodic=False)
            raise self._interrupted()
        every = self.checkpoint_every_n_steps
        if every and self.state.global_step % every == 0:
            self._save(is_best=False, periodic=False)

    def _interrupted(self) -> Interrupted:
        return self._signals.interrupted(
            f"at step {self.state.global_step}; saved {self.file_manager.checkpoint_dir / 'last.pt'}. To "
            f"resume, run the same command with resume=auto (same hydra.run.dir) or resume={self.file_manager.run_dir}"
        )

    def validate(self) -> float:
        """Mean loss of the EMA model on the validation split, at fixed timesteps and noise."""
        return self.validation(self.ema.shadow)

    def _run_epoch_hooks(self, epoch: int) -> dict[str, float]:
        extra: dict[str, float] = {}
        if self.dist.is_main:
            for hook in self.epoch_hooks:
                extra.update(hook(epoch, self.state.global_step, self.ema.shadow) or {})
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
            **({"skipped_steps": state.skipped_steps} if state.skipped_steps else {}),
            **extra,
        }

    def _checkpoint(self) -> None:
        value = self._monitored_value()
        is_best = value is not None and value < self.state.best_metric
        if is_best:
            self.state.best_metric = value  # type: ignore[assignment]
        self.state.metrics["best/" + self.monitor] = self.state.best_metric
        self._save(is_best=is_best)

    def _save(self, is_best: bool, periodic: bool | None = None) -> None:
        self.checkpoints.save(self.checkpoint_dict, self.state.global_step, is_best, periodic)

    def _monitored_value(self) -> float | None:
        if is_val_loss(self.monitor):
            return self.state.val_losses[-1]
        value = self.state.metrics.get(self.monitor)
        return None if value is None else float(value)  # e.g. a metric computed every N epochs only

    def checkpoint_dict(self, rank_rng_states: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The checkpoint of this moment (its layout: :mod:`diffusion.storage.checkpoint`); ``rank_rng_states`` is every
        rank's RNG states (default: this process's alone)."""
        self.state.logger_run_id = self.logger.run_id or self.state.logger_run_id  # W&B continues the same run
        rng = rank_rng_states or [rng_state()]
        return checkpoint.build(self._parts(), self.state, self.monitor, self.run_config, rng)

    def restore(self, ckpt: dict[str, Any], source: str | Path) -> None:
        """Put back weights, EMA, optimizer, LR schedule, counters, histories and epoch position from the loaded
        checkpoint ``ckpt`` (read from ``source``); the RNG states follow at the start of :meth:`train`. Writes
        nothing, so a caller can restore before writing any file into the run directory.

        Raises:
            CheckpointError: the checkpoint was trained with another model or optimizer configuration.
        """
        self.state = self.checkpoints.restore(ckpt, self._parts(), source)

    def _parts(self) -> checkpoint.TrainingParts:
        return checkpoint.TrainingParts(self.model, self.ema, self.optimizer, self.scheduler, self.scaler,
                                        self.trainable)

    def get_loss_histories(self) -> LossHistories:
        return LossHistories(list(self.state.train_losses), list(self.state.val_losses))

    def summary(self) -> dict[str, float]:
        state = self.state
        return {
            "epochs": state.epoch,
            "global_step": state.global_step,
            "final_train_loss": state.train_losses[-1] if state.train_losses else math.nan,
            "final_val_loss": state.val_losses[-1] if state.val_losses else math.nan,
            "best_val_loss": state.best_val_loss,
            "best_" + self.monitor.replace("/", "_"): state.best_metric,
            "skipped_steps": state.skipped_steps,
        }

    @property
    def current_lr(self) -> float:
        return self.step.lr

    def _remaining(self) -> str:
        if self.state.epoch >= self.epochs or self._reached_max_steps():
            return f"training already complete ({self.state.epoch} epochs, {self.state.global_step} steps)"
        if self.max_steps is not None:
            return f"steps {self.state.global_step + 1}..{self.max_steps}"
        return f"epochs {self.state.epoch + 1}..{self.epochs}"

    def _banner(self) -> str:
        parameters = sum(p.numel() for p in self.model.parameters())
        ranks = f" x {self.dist.world_size} ranks" if self.dist.enabled else ""
        return (
            f"training {parameters:,} parameters on {self.device}{ranks} ({self.precision}, "
            f"{torch.get_num_threads()} threads); "
            f"{len(self.splits.train)} train / {len(self.splits.val)} val samples, {self.steps_per_epoch} steps "
            f"per epoch, {self._remaining()}"
        )


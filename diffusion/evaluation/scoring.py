"""Where evaluation meets a run: scoring during training (an epoch hook) and after it (``eval.json``)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from diffusion.evaluation.evaluators import BaseEvaluator
from diffusion.evaluation.reports import format_metrics, metric_values, metrics_to_json
from diffusion.evaluation.sampler_steps import evaluate_at_steps, format_steps_table, method_name
from diffusion.loggers.base import BaseLogger
from diffusion.sampler import Sampler, SampleResult
from diffusion.trainer import EpochHook, Trainer


def epoch_evaluation(evaluator: BaseEvaluator, sampler: Sampler) -> EpochHook:
    """A trainer hook that scores ``evaluator.num_samples`` samples of ``sampler`` (built on the EMA weights)
    every ``evaluator.every_n_epochs``; its metrics are logged and can be ``trainer.monitor``."""

    def hook(trainer: Trainer, epoch: int) -> dict[str, float] | None:
        if not evaluator.is_due(epoch):
            return None
        samples = sampler.sample(num_samples=evaluator.num_samples).samples
        metrics = evaluator.evaluate(samples)
        trainer.logger.log(f"epoch {epoch} evaluation ({len(samples)} samples):\n{format_metrics(metrics)}")
        return metric_values(metrics)

    return hook


def evaluate_samples(
    evaluator: BaseEvaluator,
    sampler: Sampler,
    result: SampleResult,
    seconds_per_sample: float,
    directory: Path,
    logger: BaseLogger,
) -> dict[str, Any] | None:
    """Score ``result`` (and, with ``evaluator.sampler_steps``, the same weights at each step count), write
    ``eval.json`` (and ``eval_steps.md``) into ``directory``, log and print the scores. None when disabled."""
    if not evaluator.available:
        return None
    samples = result.samples[: evaluator.num_samples]
    metrics = evaluator.evaluate(samples)
    payload = metrics_to_json(metrics, len(samples), method_name(sampler), result.steps, seconds_per_sample)
    logger.log(f"evaluation of {len(samples)} samples ({method_name(sampler)}, {result.steps} steps):\n"
               f"{format_metrics(metrics)}")
    logger.log(metric_values(metrics))
    if evaluator.sampler_steps:
        rows = evaluate_at_steps(sampler, evaluator, evaluator.sampler_steps)
        table = format_steps_table(rows)
        (directory / "eval_steps.md").write_text(table + "\n")
        logger.log("scores per sampler step count:\n" + table)
        payload["sampler_steps"] = [
            metrics_to_json(row.metrics, len(samples), row.sampler, row.steps, row.seconds_per_sample)
            for row in rows
        ]
    (directory / "eval.json").write_text(json.dumps(payload, indent=2) + "\n")
    logger.log_summary(metric_values(metrics))
    return payload


def timed_sample(sampler: Sampler, num_samples: int, record_timesteps: list[int]) -> tuple[SampleResult, float]:
    """Sample and measure wall seconds per sample (synchronising CUDA so the time is real)."""
    if sampler.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = sampler.sample(num_samples=num_samples, record_timesteps=record_timesteps)
    if sampler.device.type == "cuda":
        torch.cuda.synchronize()
    return result, (time.perf_counter() - start) / num_samples


def epoch_sample_grid(sampler: Sampler, directory: Path, every_n_epochs: int) -> EpochHook:
    """A trainer hook that saves ``samples/epoch_NNNN.png`` (EMA weights) every ``every_n_epochs`` and hands it
    to the logger (W&B shows it as an image)."""
    from diffusion.images import save_image_grid

    def hook(trainer: Trainer, epoch: int) -> None:
        if epoch % every_n_epochs:
            return None
        samples = sampler.sample().samples
        if samples.dim() == 4:
            path = save_image_grid(samples, directory / "samples" / f"epoch_{epoch:04d}.png",
                                   nrow=sampler.grid_row_length(len(samples)))
            trainer.logger.log_image("samples", path, step=trainer.state.global_step)
        return None

    return hook

"""Sample, save, score: what follows training, for ``task=sample`` / ``task=evaluate``, and every N epochs.

Draws samples, writes ``samples.npz`` and its pictures, scores them into ``eval.json`` (with
``evaluator.sampler_steps``, quality against steps: DDIM, Song et al. 2021, Table 1), and makes the Trainer's
per-epoch hooks.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffusion.data.base import BaseData
from diffusion.evaluation.evaluators import BaseEvaluator
from diffusion.evaluation.results import (
    StepsRow,
    format_metrics,
    format_steps_table,
    metric_values,
    metrics_to_json,
    summary_values,
)
from diffusion.loggers.base import BaseLogger
from diffusion.runtime.checks import ConfigError, check_int
from diffusion.runtime.signals import StopSignals, stop_at_once
from diffusion.sampling.sampler import Sampler, SampleResult, save_samples
from diffusion.storage.atomic import atomic_write_text
from diffusion.tasks.score_curve import KIMG, kimg
from diffusion.tasks.seed_sets import add_seed_fields, seed_means, seed_set_scores, seeds_payload
from diffusion.training.trainer import EpochHook

TRAJECTORY_POINTS = 8  # columns of the denoising-trajectory strip, the final sample included
FINAL = -1  # the trajectory key of the final sample (``t_prev`` of the last step)


def prepare_evaluator(evaluator: BaseEvaluator, data: BaseData) -> None:
    """Fit the evaluator to the data (ConfigError when they do not match, so call it before writing); its
    ``unavailable_reason`` log record is held back so :func:`log_unavailable` says it once.
    """
    if not evaluator.enabled:
        return
    module_log = logging.getLogger(type(evaluator).__module__)

    def not_the_reason(record: logging.LogRecord) -> bool:
        return record.getMessage() != evaluator.unavailable_reason

    module_log.addFilter(not_the_reason)
    try:
        evaluator.prepare(data.scored_data)  # latents: the images they encode
    finally:
        module_log.removeFilter(not_the_reason)


def log_unavailable(evaluator: BaseEvaluator, logger: BaseLogger) -> None:
    """Say once when the chosen evaluator cannot score on this machine (and how to fix that)."""
    if evaluator.enabled and evaluator.unavailable_reason:
        logger.log(f"warning: {evaluator.unavailable_reason}")


def stop_sampling_on_signal(source: Path) -> StopSignals:
    """While entered, SIGTERM/SIGINT end sampling at once with :class:`~diffusion.runtime.signals.Interrupted`, saying
    what was kept (``source``) and how to sample again: unlike training, sampling has nothing to save.
    """
    kept = f"the checkpoints in {source / 'checkpoints'} are" if source.is_dir() else f"{source} is"
    return stop_at_once(f"while sampling; {kept} kept: sample again with python run.py task=sample run_dir={source}")


def sample_save_score(
    sampler: Sampler, evaluator: BaseEvaluator, data: BaseData, directory: Path, logger: BaseLogger
) -> dict[str, float] | None:
    """Sample once, write ``samples.npz`` (``sampler.format=adm``: the ADM suite's file) and its pictures into
    ``directory``, and score (``eval.json``).

    ``evaluator.sampler_steps``: one pass per step count, the last saved; ``evaluator.seeds``: one set per seed
    (:mod:`~diffusion.tasks.seed_sets`; with step counts, per step count), the first saved. Under torchrun every
    rank draws its share and rank 0 alone writes and scores. Returns ``{metric: value}`` on rank 0, else (or when
    nothing was scored) None.
    """
    main = sampler.distributed.is_main
    scoring = sampler.distributed.broadcast_object(evaluator.available)  # rank 0 alone prepared the evaluator
    count = max(sampler.num_samples, evaluator.num_samples) if scoring else sampler.num_samples
    seeds = evaluator.seeds if scoring and evaluator.seeds else [0]
    if scoring and evaluator.sampler_steps:
        rows, result, seconds = evaluate_at_steps(sampler, evaluator, evaluator.sampler_steps, logger)
    else:
        record = trajectory_timesteps(sampler.timesteps())
        result, seconds = timed_sample(sampler, count, record, first_index=seeds[0] * count)
        rows = []
    if main:
        reference = None if data.kind == "image" else data.load().val
        images, nrow = grid_selection(sampler, result)
        written = save_samples(result, directory, reference=reference, grid=images, nrow=nrow, format=sampler.format)
        logger.log_image("samples", written[1])
        logger.log(f"sampled {len(result.samples)} in {seconds * len(result.samples):.1f} s "
                   f"({seconds * 1e3:.2f} ms/sample)")
    if not scoring:
        return None
    if len(seeds) > 1:  # the last step count's sets, when there are rows
        per_seed = (rows[-1].per_seed or []) if rows else seed_set_scores(evaluator, sampler, result, count)
        payload = seeds_payload(evaluator, sampler, per_seed, result, seconds, logger) if main else {}
    else:
        payload = score(evaluator, sampler, result, seconds, logger) if main else {}
    if not main:
        return None
    if rows:
        table = format_steps_table(rows)
        atomic_write_text(directory / "eval_steps.md", table + "\n")
        logger.log("scores per sampler step count:\n" + table)
        payload["sampler_steps"] = [steps_entry(row, evaluator.num_samples) for row in rows]
    atomic_write_text(directory / "eval.json", json.dumps(payload, indent=2) + "\n")  # a failed write keeps the old
    values = {name: entry["value"] for name, entry in payload.items() if isinstance(entry, dict)}
    logger.log_summary(summary_values(payload))
    return values


def steps_entry(row: StepsRow, num_samples: int) -> dict[str, Any]:
    """One step count's ``eval.json`` record (with its seed sets' fields under ``evaluator.seeds``)."""
    entry = metrics_to_json(row.metrics, num_samples, row.sampler, row.steps, row.seconds_per_sample, nfe=row.nfe)
    return add_seed_fields(entry, row.per_seed) if row.per_seed and len(row.per_seed) > 1 else entry


def score(
    evaluator: BaseEvaluator, sampler: Sampler, result: SampleResult, seconds_per_sample: float, logger: BaseLogger
) -> dict[str, Any]:
    """Score the first ``evaluator.num_samples`` of ``result``; log and print the scores; the eval.json dict."""
    samples = result.samples[: evaluator.num_samples]
    metrics = evaluator.evaluate(samples)
    nfe = result.nfe
    payload = metrics_to_json(metrics, len(samples), sampler.name, result.steps, seconds_per_sample, nfe=nfe)
    logger.log(f"evaluation of {len(samples)} samples ({sampler.name}, {result.steps} steps, {nfe} NFE):\n"
               f"{format_metrics(metrics)}")
    logger.log(metric_values(metrics))
    return payload


def evaluate_at_steps(
    sampler: Sampler, evaluator: BaseEvaluator, steps_list: Sequence[int], logger: BaseLogger | None = None
) -> tuple[list[StepsRow], SampleResult, float]:
    """Sample ``evaluator.num_samples`` with each step count in ``steps_list`` and score them (with
    ``evaluator.seeds``, on each seed's disjoint set: the row holds the means and ``per_seed``); only
    ``sampler.steps`` changes, and is restored. A row holds the steps really run (DDPM always runs all T, so its
    counts collapse into one row). Returns the rows, and the last row's first samples and seconds per sample.

    Raises:
        ConfigError: if a step count is not in ``[1, method.num_timesteps]``, or the evaluator is ``none``.
    """
    if not evaluator.enabled:
        raise ConfigError("evaluator.sampler_steps needs an evaluator that scores; evaluator=none scores nothing")
    num_timesteps = sampler.method.num_timesteps
    checked = [check_int(s, "evaluator.sampler_steps", minimum=1, maximum=num_timesteps) for s in steps_list]
    rows: list[StepsRow] = []
    seen: set[int] = set()
    original_steps = sampler.steps
    last: tuple[SampleResult, float] | None = None
    try:
        for steps in checked:
            sequence = sampler.timesteps(steps)
            if len(sequence) in seen:
                continue
            seen.add(len(sequence))
            sampler.steps = steps
            if logger is not None:
                logger.log(f"sampling {evaluator.num_samples} with {sampler.name} at {len(sequence)} steps")
            count = evaluator.num_samples
            seeds = evaluator.seeds or [0]
            result, seconds = timed_sample(sampler, count, trajectory_timesteps(sequence), seeds[0] * count)
            per_seed = seed_set_scores(evaluator, sampler, result, count)
            metrics = (seed_means(per_seed) if len(seeds) > 1 else per_seed[0]) if per_seed else {}
            rows.append(StepsRow(sampler.name, result.steps, metrics, seconds, result.nfe,
                                 per_seed if len(seeds) > 1 else None))
            last = (result, seconds)
    finally:
        sampler.steps = original_steps
    assert last is not None, "at least one step count"
    return rows, *last


def timed_sample(sampler: Sampler, num_samples: int, record_timesteps: Sequence[int],
                 first_index: int = 0) -> tuple[SampleResult, float]:
    """Sample and measure wall seconds per sample (synchronising CUDA so the time is real)."""
    if sampler.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = sampler.sample(num_samples=num_samples, record_timesteps=record_timesteps, first_index=first_index)
    if sampler.device.type == "cuda":
        torch.cuda.synchronize()
    return result, (time.perf_counter() - start) / num_samples


def trajectory_timesteps(sequence: Sequence[int]) -> list[int]:
    """Up to ``TRAJECTORY_POINTS - 1`` timesteps spread evenly over the whole sampling sequence (its first, from
    pure noise, and its last, where the image forms, included), plus :data:`FINAL`, the sample."""
    picks = TRAJECTORY_POINTS - 1
    if len(sequence) <= picks:
        return [*sequence, FINAL]
    positions = [round(i * (len(sequence) - 1) / (picks - 1)) for i in range(picks)]
    return [sequence[p] for p in positions] + [FINAL]


def grid_selection(sampler: Sampler, result: SampleResult) -> tuple[torch.Tensor, int | None]:
    """The images of ``samples.png`` and its row length: the first ``sampler.num_samples``, or, for
    ``sampler.class_labels=all``, the same number of each class, one row per class, whatever the number drawn."""
    shown = result.samples[: sampler.num_samples]
    if sampler.class_labels != "all" or result.labels is None:
        return shown, None
    per_class = max(1, sampler.num_samples // sampler.num_classes)
    rows = [result.samples[result.labels == c][:per_class] for c in range(sampler.num_classes)]
    return torch.cat(rows), per_class


def write_posthoc_table(rows: Sequence[tuple[float, dict[str, float] | None]], directory: Path) -> list[Path]:
    """``posthoc_ema.md`` (one row per reconstructed EMA std, one column per score) and, with scores,
    ``posthoc_ema.png`` (each score against the std): EDM2's EMA-length sweep without retraining."""
    from diffusion.storage.images import save_curves

    names = [name for name in (rows[0][1] or {})] if rows else []
    lines = ["| ema std | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for std, scores in rows:
        lines.append(f"| {std:g} | " + " | ".join(f"{(scores or {}).get(n, float('nan')):.4g}" for n in names) + " |")
    written = [directory / "posthoc_ema.md"]
    atomic_write_text(written[0], "\n".join(lines) + "\n")
    if names:
        curves = {name: [(std, (scores or {}).get(name, float("nan"))) for std, scores in rows] for name in names}
        written.append(save_curves(curves, directory / "posthoc_ema.png", xlabel="EMA relative std (sigma_rel)"))
    return written


def epoch_evaluation(evaluator: BaseEvaluator, sampler: Sampler, logger: BaseLogger,
                     images_per_step: int | None = None) -> EpochHook:
    """A trainer hook that scores ``evaluator.num_samples`` samples of the EMA weights (drawn by ``sampler``, whose
    network takes them) every ``evaluator.every_n_epochs``; its metrics are logged and can be ``trainer.monitor``.
    With ``images_per_step`` (the global batch) it logs ``kimg`` beside them, the x axis of the score curve
    (:mod:`~diffusion.tasks.score_curve`)."""

    def hook(epoch: int, global_step: int, ema_model: nn.Module) -> dict[str, float] | None:
        if not evaluator.is_due(epoch):
            return None
        sampler.model.load_state_dict(ema_model.state_dict())
        samples = sampler.sample(num_samples=evaluator.num_samples).samples
        metrics = evaluator.evaluate(samples)
        logger.log(f"epoch {epoch} evaluation ({len(samples)} samples):\n{format_metrics(metrics)}")
        seen = {} if images_per_step is None else {KIMG: kimg(global_step, images_per_step)}
        return metric_values(metrics) | seen

    return hook


def epoch_sample_grid(sampler: Sampler, directory: Path, every_n_epochs: int, logger: BaseLogger) -> EpochHook:
    """A trainer hook that saves ``samples/epoch_NNNN.png`` of the EMA weights (drawn by ``sampler``, whose network
    takes them) every ``every_n_epochs`` and hands it to the logger (W&B shows it as an image)."""
    from diffusion.storage.images import save_image_grid

    def hook(epoch: int, global_step: int, ema_model: nn.Module) -> None:
        if epoch % every_n_epochs:
            return None
        sampler.model.load_state_dict(ema_model.state_dict())
        result = sampler.sample()
        if result.samples.dim() == 4:
            images, nrow = grid_selection(sampler, result)
            path = save_image_grid(images, directory / "samples" / f"epoch_{epoch:04d}.png", nrow=nrow)
            logger.log_image("samples", path, step=global_step)
        return None

    return hook

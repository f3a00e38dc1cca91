"""``task=evaluate run_dir=<samples .npz>``: score a sample file made elsewhere (another repository's samples in the
ADM suite's ``.npz``, or a run's ``samples.npz``) against this command line's data with its evaluator.

The file has no run config, so the data and evaluator are the command line's (``data=cifar10`` brings
``evaluator=cifar10``); the scores, the config and a picture of the first samples go to this command's own output
folder, never beside the file, which may belong to someone else.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from diffusion.data.base import BaseData
from diffusion.evaluation.evaluators import BaseEvaluator
from diffusion.evaluation.results import format_metrics, metric_values, metrics_to_json, summary_values
from diffusion.loggers import FileLogger
from diffusion.runtime.checks import ConfigError
from diffusion.storage.atomic import atomic_write_text
from diffusion.storage.sample_files import SampleFile, read_sample_file
from diffusion.tasks.components import RunSettings
from diffusion.tasks.run_files import print_run_files
from diffusion.tasks.sample_and_score import log_unavailable, prepare_evaluator

GRID_SAMPLES = 64  # samples shown in samples.png


def score_sample_file(data: BaseData, evaluator: BaseEvaluator, run: RunSettings) -> float | None:
    """Read ``run.source``, check it against the data (before anything is written), score every sample in it and
    write ``eval.json``, ``samples.png``, ``train.log`` and the config into ``run.output_dir``; returns the first
    score, if any.

    Raises:
        ConfigError: naming the file (wrong layout, dtype or shape) or the evaluator key that cannot apply.
    """
    source = run.source
    assert source is not None, "the app refuses task=evaluate without run_dir"
    check_file_evaluator(evaluator)
    loaded = read_sample_file(source, tuple(data.sample_shape))
    samples = file_samples(data, loaded)
    prepare_evaluator(evaluator, data)
    output_dir = run.output_dir
    run.save_config(output_dir)
    with FileLogger(output_dir) as logger:
        layout = "ADM .npz, uint8" if loaded.images is not None else "samples.npz, float"
        logger.log(f"{run.label}: {source} ({len(loaded)} samples, {layout})")
        log_unavailable(evaluator, logger)
        save_picture(samples, output_dir)
        if not evaluator.available:
            return None
        metrics = evaluator.evaluate(samples)
        logger.log(f"evaluation of {len(samples)} samples from {source.name}:\n{format_metrics(metrics)}")
        logger.log(metric_values(metrics))
        payload = metrics_to_json(metrics, len(samples), sampler="file", steps=0, seconds_per_sample=None, nfe=0)
        payload["samples_file"] = str(source.resolve())
        atomic_write_text(output_dir / "eval.json", json.dumps(payload, indent=2) + "\n")
        logger.log_summary(summary_values(payload))
    print_run_files(output_dir)
    return next(iter(metrics.values())).value if metrics else None


def check_file_evaluator(evaluator: BaseEvaluator) -> None:
    """A file is scored once, as it is: an evaluator must score, and cannot draw more sets or step counts.

    Raises:
        ConfigError: for ``evaluator=none``, ``evaluator.seeds`` or ``evaluator.sampler_steps``.
    """
    if not evaluator.enabled:
        raise ConfigError("task=evaluate of a sample file needs an evaluator that scores; evaluator=none scores "
                          "nothing (choose data=... and its evaluator=...)")
    for key, value in (("seeds", evaluator.seeds), ("sampler_steps", evaluator.sampler_steps)):
        if value is not None:
            raise ConfigError(f"evaluator.{key}={value} draws new samples from a model; a sample file is scored as "
                              f"it is: set evaluator.{key}=null")


def file_samples(data: BaseData, loaded: SampleFile) -> torch.Tensor:
    """The file's samples in the data's range: ADM's uint8 pixels through the data's own uint8 conversion."""
    if loaded.images is not None:
        return data.prepare_batch(loaded.images)
    assert loaded.samples is not None, "a SampleFile holds images or samples"
    return loaded.samples


def save_picture(samples: torch.Tensor, directory: Path) -> None:
    """``samples.png``: the first :data:`GRID_SAMPLES` as an image grid, or a scatter plot of points."""
    from diffusion.storage.images import save_image_grid, save_scatter

    shown = samples[:GRID_SAMPLES]
    if shown.dim() == 4:
        save_image_grid(shown, directory / "samples.png")
    else:
        save_scatter(samples, directory / "samples.png")

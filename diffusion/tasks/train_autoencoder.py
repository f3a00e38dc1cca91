"""``task=train_autoencoder``: train a KL autoencoder (``autoencoder=own``) on image data with the project's
Trainer (EMA, exact resume, checkpoints through the FileManager), then score its best EMA weights on the held-out
split: reconstruction PSNR, and the data's evaluator on the reconstructions (their FD is the floor any latent model
of this space can reach, as its samples are decoded by the same decoder).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from diffusion.autoencoders.loss import AutoencoderLoss
from diffusion.data.base import BaseData
from diffusion.evaluation.evaluators import BaseEvaluator
from diffusion.evaluation.results import format_metrics, metrics_to_json, summary_values
from diffusion.loggers import NullLogger
from diffusion.loggers.base import BaseLogger
from diffusion.loggers.naming import is_val_loss
from diffusion.runtime.checks import ConfigError
from diffusion.runtime.distributed import DistributedContext
from diffusion.storage import checkpoint
from diffusion.storage.atomic import atomic_write_text
from diffusion.storage.file_manager import FileManager
from diffusion.storage.resume import shared_resume
from diffusion.tasks.components import RunSettings
from diffusion.tasks.exits import exit_on_failure, holding_run, stopped_outside_the_loop
from diffusion.tasks.run_files import print_run_files, remove_if_empty
from diffusion.tasks.sample_and_score import log_unavailable, prepare_evaluator
from diffusion.tasks.train import train_or_stop
from diffusion.training.trainer import Trainer


class AutoencoderParts(NamedTuple):
    """What ``task=train_autoencoder`` is handed: the image data, the ``AutoencoderKL``, its loss, the evaluator
    and the factories of trainer, checkpoints and logger (as for ``task=train``)."""

    data: BaseData
    network: nn.Module
    loss: AutoencoderLoss
    evaluator: BaseEvaluator
    make_trainer: Callable[..., Trainer]
    make_file_manager: Callable[[Path], FileManager]
    make_logger: Callable[[Path, str | None], BaseLogger]


def train_autoencoder(parts: AutoencoderParts, run: RunSettings, dist: DistributedContext) -> float:
    """Train (or resume) under the run lock, then score the best EMA weights; returns the best validation loss."""
    resume = shared_resume(dist, run.resume, run.output_dir)
    if resume.run_dir != run.output_dir:
        remove_if_empty(run.output_dir)
    run_id = checkpoint.logger_run_id(resume.state) if resume.state else None
    logger = parts.make_logger(resume.run_dir, run_id) if dist.is_main else NullLogger()
    trainer = parts.make_trainer(
        model=parts.network, method=parts.loss, data=parts.data, file_manager=parts.make_file_manager(resume.run_dir),
        logger=logger, seed=run.seed, run_config=run.config, distributed=dist, max_steps=run.max_steps,
    )
    if not is_val_loss(trainer.monitor):
        raise ConfigError(f"trainer.monitor={trainer.monitor}: task=train_autoencoder keeps the checkpoint of the "
                          "best validation loss; use trainer.monitor=val_loss")
    if resume.state is not None:
        trainer.restore(resume.state, resume.checkpoint)
    if dist.is_main:
        prepare_evaluator(parts.evaluator, parts.data)
    with holding_run(resume.run_dir, dist.rank, stopped_outside_the_loop(resume.run_dir)):
        if dist.is_main:
            run.save_config(resume.run_dir)
            run.print_config()
        with logger:
            logger.log_hyperparams(run.config)
            log_unavailable(parts.evaluator, logger)
            summary, finished = train_or_stop(trainer)
            if finished and dist.is_main:
                with exit_on_failure():
                    best = trainer.file_manager.load("best", map_location=trainer.device)
                    parts.network.load_state_dict(checkpoint.ema_weights(best))
                    payload = score_reconstructions(parts.network, parts.data, parts.evaluator, logger)
                atomic_write_text(resume.run_dir / "eval.json", json.dumps(payload, indent=2) + "\n")
                logger.log_summary(summary_values(payload))
    dist.close()
    if dist.is_main:
        print_run_files(resume.run_dir)
    return float(summary["best_val_loss"])


@torch.inference_mode()
def score_reconstructions(network: nn.Module, data: BaseData, evaluator: BaseEvaluator, logger: BaseLogger,
                          batch_size: int = 256) -> dict[str, Any]:
    """PSNR (dB, images on [0, 1], mean over images) of the held-out split's reconstructions from the posterior
    mean, and the evaluator's scores of them (the first ``evaluator.num_samples``); the ``eval.json`` dict."""
    network.eval()
    device = next(network.parameters()).device
    val = data.load().val
    count = min(len(val), evaluator.num_samples) if evaluator.enabled else len(val)
    start = time.perf_counter()
    images, reconstructions = [], []
    for chunk in val[:count].split(batch_size):
        x = data.prepare_batch(chunk.to(device)).float()
        images.append(x.cpu())
        reconstructions.append(network.decode(network.encode(x).latent_dist.mean).sample.clamp(-1, 1).float().cpu())
    x, x_hat = torch.cat(images), torch.cat(reconstructions)
    seconds = (time.perf_counter() - start) / count
    mse = ((x_hat - x) / 2).pow(2).flatten(1).mean(1)  # on [0, 1]: half the [-1, 1] difference
    psnr = float((10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean())
    logger.log(f"reconstruction of {count} held-out images: PSNR {psnr:.2f} dB")
    payload: dict[str, Any] = {"psnr": {"value": psnr}}
    if evaluator.enabled and evaluator.available:
        metrics = evaluator.evaluate(x_hat)
        logger.log(f"evaluation of the {count} reconstructions (the floor of a latent model in this space):\n"
                   f"{format_metrics(metrics)}")
        payload.update(metrics_to_json(metrics, count, "autoencoder", 1, seconds, nfe=1))
    return payload

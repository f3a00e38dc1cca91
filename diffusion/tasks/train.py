"""``task=train`` and ``task=distill``: train (or resume) under the run lock, then sample from the best EMA
checkpoint and score; a distillation keeps round checkpoints and scores in a ``DistillSession``.
"""

from __future__ import annotations

import copy
import sys
from typing import Any, NamedTuple

from diffusion.distill.session import DistillSession
from diffusion.evaluation import NoneEvaluator, metric_values
from diffusion.evaluation.evaluators import BaseEvaluator
from diffusion.loggers import NullLogger
from diffusion.loggers.base import BaseLogger
from diffusion.loggers.naming import is_val_loss
from diffusion.runtime.checks import ConfigError
from diffusion.runtime.distributed import DistributedContext
from diffusion.runtime.signals import Pruned
from diffusion.storage import checkpoint
from diffusion.storage.resume import ResumePoint, shared_resume
from diffusion.tasks.components import Components, RunSettings
from diffusion.tasks.exits import exit_on_failure, holding_run, stopped_outside_the_loop
from diffusion.tasks.run_files import print_run_files, remove_if_empty
from diffusion.tasks.sample import sample_or_stop
from diffusion.tasks.sample_and_score import epoch_evaluation, epoch_sample_grid, log_unavailable, prepare_evaluator
from diffusion.tasks.score_curve import write_score_curve
from diffusion.training.trainer import EpochHook, Trainer


class TrainingJob(NamedTuple):
    trainer: Trainer
    logger: BaseLogger
    session: DistillSession | None  # a distillation's round keeping


def train(parts: Components, run: RunSettings, dist: DistributedContext, distill: bool = False) -> float:
    """Train ``parts.model`` (or, with ``distill``, the distillation's student); returns the best monitored value,
    what a sweeper minimises."""
    resume = shared_resume(dist, run.resume, run.output_dir)
    if resume.run_dir != run.output_dir:
        remove_if_empty(run.output_dir)  # Hydra made it for this job; the run lives elsewhere (resumed, rank 0's)
    job = prepare_training(parts, run, dist, resume, distill)  # every check; nothing written yet
    # One writer per run directory (a requeued twin is refused)
    with holding_run(resume.run_dir, dist.rank, stopped_outside_the_loop(resume.run_dir)):
        return run_training(parts, run, dist, job)


def prepare_training(parts: Components, run: RunSettings, dist: DistributedContext, resume: ResumePoint,
                     distill: bool) -> TrainingJob:
    """Build and check the trainer, its hooks and logger (and a distillation's session); writes nothing."""
    run_id = checkpoint.logger_run_id(resume.state) if resume.state else None
    logger = parts.make_logger(resume.run_dir, run_id) if dist.is_main else NullLogger()
    data = parts.data if parts.training_data is None else parts.training_data  # reflow: the pairs
    trainer = parts.make_trainer(
        model=parts.model, method=parts.method, data=data, file_manager=parts.make_file_manager(resume.run_dir),
        logger=logger, seed=run.seed, run_config=run.config, distributed=dist, max_steps=run.max_steps,
        epoch_hooks=epoch_hooks(parts, resume, logger),
        epoch_end_hooks=run.search_hooks(resume.run_dir) if dist.is_main else (),
    )
    if resume.state is not None:
        trainer.restore(resume.state, resume.checkpoint)  # a checkpoint that does not fit fails before any write
    if hasattr(parts.method, "follow_steps"):  # a loss that changes with the step (sCM's warm-up, ECT's schedule)
        parts.method.follow_steps(lambda: trainer.state.global_step)
    session = distill_session(parts, trainer, resume) if distill else None
    check_monitor(trainer.monitor, parts.evaluator)
    if dist.is_main:
        prepare_evaluator(parts.evaluator, parts.data)  # an evaluator that does not fit the data fails here
    return TrainingJob(trainer, logger, session)


def epoch_hooks(parts: Components, resume: ResumePoint, logger: BaseLogger) -> list[EpochHook]:
    """Scores and sample grids of the EMA weights every N epochs, on a sampler of their own copy of the network."""
    sampler = parts.make_sampler(copy.deepcopy(parts.model))
    hooks = []
    if parts.evaluator.every_n_epochs:
        batch = parts.config.get("trainer", {}).get("batch_size")  # the global batch: kimg on the score curve
        hooks.append(epoch_evaluation(parts.evaluator, sampler, logger, batch if isinstance(batch, int) else None))
    if sampler.grid_every_n_epochs:
        hooks.append(epoch_sample_grid(sampler, resume.run_dir, sampler.grid_every_n_epochs, logger))
    return hooks


def distill_session(parts: Components, trainer: Trainer, resume: ResumePoint) -> DistillSession:
    """Round checkpoints, per-round scores (the evaluator's, at the round's steps) and resume for a distillation."""
    evaluator = parts.evaluator

    def score(steps: int) -> dict[str, float]:
        sampler = parts.make_sampler(trainer.ema.shadow, steps=steps)
        return metric_values(evaluator.evaluate(sampler.sample(num_samples=evaluator.num_samples).samples))

    session = DistillSession(
        trainer.method, step_count=lambda: trainer.state.global_step,  # type: ignore[arg-type]
        checkpoint_dict=trainer.checkpoint_dict, file_manager=trainer.file_manager, logger=trainer.logger,
        score=None if isinstance(evaluator, NoneEvaluator) else score,
    )
    session.start(resume.state)
    return session


def run_training(parts: Components, run: RunSettings, dist: DistributedContext, job: TrainingJob) -> float:
    """Train, then sample from the best EMA checkpoint and score; returns the objective a sweeper minimises."""
    trainer, logger = job.trainer, job.logger
    run_dir = trainer.file_manager.run_dir
    if dist.is_main:
        run.save_config(run_dir)
        run.print_config()
    with logger:
        if dist.is_main:
            logger.log_hyperparams(run.config)
            log_unavailable(parts.evaluator, logger)
        summary, finished = train_or_stop(trainer)
        if dist.is_main and parts.evaluator.every_n_epochs:
            write_score_curve(run_dir, parts.evaluator.metric_names, logger)
        if job.session is not None and finished:
            with exit_on_failure():
                job.session.finish()
        if finished:  # every rank samples its share; rank 0 writes and scores
            sampler = parts.make_sampler(parts.model, run_dir, dist)
            best = sampler.load_checkpoint(trainer.file_manager, "best")
            logger.log(f"sampling from the best EMA checkpoint (epoch {checkpoint.epoch(best)})")
            summary.update(sample_or_stop(run_dir, sampler, parts.evaluator, parts.data, run_dir, logger) or {})
            logger.log_summary(summary)
    dist.close()
    if dist.is_main:
        print_run_files(run_dir)
    return float(summary["best_" + trainer.monitor.replace("/", "_")])


def train_or_stop(trainer: Trainer) -> tuple[dict[str, Any], bool]:
    """Train; returns the summary and whether training ran to its end. A trial pruned by the search returns
    early (a ``sys.exit`` would end every job of the sweep); other failures end the process (:mod:`.exits`)."""
    try:
        with exit_on_failure():
            return trainer.train(), True
    except Pruned as pruned:
        print(pruned, file=sys.stderr)
        return trainer.summary(), False


def check_monitor(monitor: str, evaluator: BaseEvaluator) -> None:
    """``trainer.monitor`` other than the validation loss is computed by evaluations during training only.

    Raises:
        ConfigError: naming ``evaluator.every_n_epochs`` and ``trainer.monitor``.
    """
    if is_val_loss(monitor):
        return
    if evaluator.enabled and monitor not in evaluator.metric_names:
        raise ConfigError(
            f"trainer.monitor={monitor} is not a metric of this evaluator (it computes: "
            f"{', '.join(evaluator.metric_names)}); choose one of those, or trainer.monitor=val_loss"
        )
    if not evaluator.every_n_epochs:
        raise ConfigError(
            f"trainer.monitor={monitor} is computed only by evaluations during training: set "
            "evaluator.every_n_epochs=N, or trainer.monitor=val_loss"
        )

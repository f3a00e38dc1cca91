"""Entry point: compose the experiment with Hydra, build every component through `_target_`, run the task.

    python run.py                                     # train on bundled digits, sample, score
    python run.py method=ddim schedule=cosine         # switch components
    python run.py -m trainer.lr=1e-4,3e-4             # a sweep: one run directory per job
    python run.py task=sample run_dir=outputs/...     # sample from an earlier run's best checkpoint
    python run.py task=evaluate run_dir=outputs/...   # score an earlier run
    python run.py task=distill run_dir=outputs/... distill=progressive   # a few-step student of that run
    torchrun --nproc_per_node=2 run.py                # data-parallel training

This is the only module that calls `hydra.utils.instantiate`; policy (resume, sample-save-score, checkpoints)
lives in the `diffusion` package, which never sees a config.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NamedTuple

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from diffusion.storage import checkpoint
from diffusion.app import (
    Components,
    DistillRun,
    check_compatible,
    check_distill_option,
    check_monitor,
    distill_run_config,
    guard_command_line,
    guard_user_errors,
    load_guide_model,
    load_source_config,
    open_run_logger,
    print_config_tree,
    print_run_files,
    remove_if_empty,
    require_run_dir,
    sampling_method_config,
    save_run_config,
    search_hooks,
)
from diffusion.distill import DistillSession
from diffusion.runtime.distributed import DistributedContext
from diffusion.evaluation import NoneEvaluator, metric_values
from diffusion.storage.export import export_weights, write_weights
from diffusion.storage.file_manager import FileManager, SaveError, load_checkpoint
from diffusion.training.posthoc_ema import reconstruct
from diffusion.loggers import FileLogger, NullLogger
from diffusion.storage.resume import ResumePoint, shared_resume
from diffusion.storage.run_lock import RunLock
from diffusion.tasks.sample_and_score import (
    epoch_evaluation,
    epoch_sample_grid,
    log_unavailable,
    prepare_evaluator,
    sample_save_score,
    stop_sampling_on_signal,
    write_posthoc_table,
)
from diffusion.sampling.sampler import Sampler
from diffusion.runtime.seeding import seed_everything
from diffusion.runtime.signals import Interrupted, Pruned
from diffusion.runtime.threads import busy_warning, cpu_limit, thread_budget
from diffusion.training.trainer import TrainingDiverged
from diffusion.runtime.checks import check_choice, check_int

CONF_DIR = str(Path(__file__).resolve().parent / "conf")
NO_EVALUATOR = {"_target_": "diffusion.evaluation.NoneEvaluator"}  # task=sample scores nothing


def main() -> None:
    """The command line. Hydra's own errors (an unknown option or key, an unparsable override, an output
    directory it cannot create) become one line and exit 2 like every other user error."""
    with guard_command_line():
        run_task()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def run_task(cfg: DictConfig) -> float | None:
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    with guard_user_errors(created_dir=output_dir):
        tasks = {"train": train, "sample": sample_or_evaluate, "evaluate": sample_or_evaluate, "export": export,
                 "posthoc_ema": posthoc_ema, "distill": distill}
        check_choice(cfg.task, "task", tuple(tasks))
        check_distill_option(cfg)
        check_int(cfg.seed, "seed")
        apply_thread_budget(cfg)
        return tasks[cfg.task](cfg, output_dir)
    return None


def apply_thread_budget(cfg: DictConfig) -> None:
    """One intra-op thread count for the process (training, sampling, scoring): the CPUs it may use divided
    among the jobs a launcher runs at once on this node; said on the console, with a warning on a busy machine."""
    launcher = OmegaConf.to_container(HydraConfig.get().launcher, resolve=True)
    budget = thread_budget(cfg.trainer.get("num_threads", "auto"), launcher=launcher)  # type: ignore[arg-type]
    torch.set_num_threads(budget.threads)
    print(budget.reason)
    warning = busy_warning(cpu_limit()[0], budget.threads)
    if warning:  # on stdout with the run's log, so that stderr keeps one line per error
        print(f"warning: {warning}")


def build(cfg: DictConfig) -> Components:
    """Instantiate data, model and method; each validates its arguments before anything is written."""
    data = instantiate(cfg.data, _convert_="all")
    choices = HydraConfig.get().runtime.choices
    check_compatible(data, get_class(cfg.model._target_), choices.get("data") or cfg.data._target_)
    return Components(data, instantiate(cfg.model, _convert_="all"), instantiate(cfg.method, _convert_="all"))


def make_sampler(cfg: DictConfig, model: Any, parts: Components, run_dir: Path | None = None,
                 dist: DistributedContext | None = None, **overrides: Any) -> Sampler:
    """The configured sampler for ``model``; with ``sampler.guide`` its autoguidance guide is loaded too (a
    checkpoint name such as ``epoch_0010`` is looked up in ``run_dir``). With ``dist``, every rank draws its share
    of the samples and rank 0 gets them all."""
    guide = cfg.sampler.get("guide")
    guide_model = None if guide is None else load_guide_model(str(guide), run_dir, cfg.method)
    return instantiate(cfg.sampler, _convert_="all")(
        model=model, method=parts.method, sample_shape=parts.data.sample_shape, guide_model=guide_model,
        distributed=dist, **overrides
    )


def distill(cfg: DictConfig, output_dir: Path) -> float:
    """``task=distill run_dir=<teacher run> distill=progressive|consistency``: a training run whose model starts as
    the teacher's best EMA weights and whose loss is the distillation's; then sample and score the student."""
    run = distill_run_config(cfg)
    return train(run.cfg, output_dir, teacher=run)


def train(cfg: DictConfig, output_dir: Path, teacher: DistillRun | None = None) -> float:
    """``task=train``: train (or resume), then sample from the best EMA checkpoint and score."""
    dist = DistributedContext.from_environment(cfg.trainer.device)
    seed_everything(cfg.seed + dist.rank)  # each rank draws its own noise and timesteps
    resume = shared_resume(dist, cfg.resume, output_dir)
    if resume.run_dir != output_dir:
        remove_if_empty(output_dir)  # Hydra made it for this job; the run lives elsewhere (resumed, rank 0's)
    job = prepare_training(cfg, dist, resume, teacher)  # every check; nothing written yet
    with RunLock(resume.run_dir, rank=dist.rank):  # one writer per run directory (a requeued twin is refused)
        return run_training(cfg, dist, job)


class TrainingJob(NamedTuple):
    run_dir: Path
    parts: Components
    trainer: Any
    evaluator: Any
    logger: Any
    session: Any  # a distillation's round keeping, or None


def prepare_training(cfg: DictConfig, dist: DistributedContext, resume: ResumePoint,
                     teacher: DistillRun | None) -> TrainingJob:
    """Build and check every component of a training run (or distillation); writes nothing."""
    run_dir = resume.run_dir
    parts = build(cfg)
    method = make_distillation(cfg, parts, teacher) if teacher else parts.method
    file_manager = instantiate(cfg.checkpoint)(run_dir=run_dir)
    run_id = checkpoint.logger_run_id(resume.state) if resume.state else None
    logger = open_run_logger(cfg, run_dir, run_id) if dist.is_main else NullLogger()
    evaluator = instantiate(cfg.evaluator, _convert_="all")
    config = OmegaConf.to_container(cfg, resolve=True)
    trainer = instantiate(cfg.trainer, _convert_="all")(
        model=parts.model, method=method, data=parts.data, file_manager=file_manager, logger=logger,
        seed=cfg.seed, run_config=config, distributed=dist, **({"max_steps": method.total_steps} if teacher else {}),
    )
    if resume.state is not None:
        trainer.restore(resume.state, resume.checkpoint)  # a checkpoint that does not fit fails before any write
    session = distill_session(cfg, trainer, parts, evaluator, resume) if teacher else None
    check_monitor(trainer.monitor, evaluator)
    if dist.is_main:
        trainer.epoch_end_hooks += search_hooks(cfg, trainer.monitor, run_dir)  # an Optuna trial reports, may prune
    if dist.is_main:
        prepare_evaluator(evaluator, parts.data)  # an evaluator that does not fit the data fails before any write
    ema_sampler = make_sampler(cfg, trainer.ema.shadow, parts)
    if evaluator.every_n_epochs:
        trainer.epoch_hooks.append(epoch_evaluation(evaluator, ema_sampler, logger))
    if ema_sampler.grid_every_n_epochs:
        trainer.epoch_hooks.append(epoch_sample_grid(ema_sampler, run_dir, ema_sampler.grid_every_n_epochs, logger))
    return TrainingJob(run_dir, parts, trainer, evaluator, logger, session)


def run_training(cfg: DictConfig, dist: DistributedContext, job: TrainingJob) -> float:
    """Train, then sample from the best EMA checkpoint and score; returns the objective a sweeper minimises."""
    run_dir, parts, trainer, evaluator, logger, session = job
    config = trainer.run_config
    if dist.is_main:
        save_run_config(cfg, run_dir, HydraConfig.get().overrides.task)
        print_config_tree(cfg)
    with logger:
        if dist.is_main:
            logger.log_hyperparams(config)
            log_unavailable(evaluator, logger)
        summary, finished = train_or_stop(trainer)
        if session is not None and finished:
            save_or_stop(session.finish)
        if finished:  # every rank samples its share; rank 0 writes and scores
            sampler = make_sampler(cfg, parts.model, parts, run_dir, dist)
            best = sampler.load_checkpoint(trainer.file_manager, "best")
            logger.log(f"sampling from the best EMA checkpoint (epoch {checkpoint.epoch(best)})")
            summary.update(sample_or_stop(run_dir, sampler, evaluator, parts.data, run_dir, logger) or {})
            logger.log_summary(summary)
    dist.close()
    if dist.is_main:
        print_run_files(run_dir)
    return float(summary["best_" + trainer.monitor.replace("/", "_")])  # what a sweeper minimises


def make_distillation(cfg: DictConfig, parts: Components, teacher: DistillRun) -> Any:
    """The distillation "method": the frozen teacher (the teacher run's best EMA weights), the student's method; the
    student network (``parts.model``) starts as a copy of the teacher."""
    weights = checkpoint.ema_weights(load_checkpoint(teacher.teacher_checkpoint))
    teacher_model = instantiate(cfg.model, _convert_="all")
    teacher_model.load_state_dict(weights)
    parts.model.load_state_dict(weights)
    return instantiate(cfg.distill, _convert_="all")(
        method=parts.method, teacher=teacher_model, teacher_step=teacher.teacher_step
    )


def distill_session(cfg: DictConfig, trainer: Any, parts: Components, evaluator: Any, resume: ResumePoint) -> Any:
    """Round checkpoints, per-round scores (the evaluator's, at the round's steps) and resume for a distillation."""

    def score(steps: int) -> dict[str, float]:
        sampler = make_sampler(cfg, trainer.ema.shadow, parts, steps=steps)
        return metric_values(evaluator.evaluate(sampler.sample(num_samples=evaluator.num_samples).samples))

    session = DistillSession(
        trainer.method, step_count=lambda: trainer.state.global_step, checkpoint_dict=trainer.checkpoint_dict,
        file_manager=trainer.file_manager, logger=trainer.logger,
        score=None if isinstance(evaluator, NoneEvaluator) else score,
    )
    session.start(resume.state)
    return session


def save_or_stop(save: Any) -> None:
    """``save()``; a failed write ends the process with one line (exit 1), like a failed checkpoint in training."""
    try:
        save()
    except SaveError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


def train_or_stop(trainer: Any) -> tuple[dict[str, Any], bool]:
    """Train; returns the summary and whether training ran to its end. A stop signal, a diverging loss or a failed
    save ends the process with its message (checkpoints kept); a trial pruned by the search returns early (a
    ``sys.exit`` would end every job of the sweep)."""
    try:
        return trainer.train(), True
    except Pruned as pruned:
        print(pruned, file=sys.stderr)
        return trainer.summary(), False
    except Interrupted as stop:
        print(stop, file=sys.stderr)
        sys.exit(stop.exit_code)
    except (TrainingDiverged, SaveError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


def sample_or_stop(source: Path, *args: Any) -> dict[str, float] | None:
    """``sample_save_score(*args)``; a stop signal ends the process with one line naming what was kept."""
    try:
        with stop_sampling_on_signal(source):
            return sample_save_score(*args)
    except Interrupted as stop:
        print(stop, file=sys.stderr)
        sys.exit(stop.exit_code)
    except SaveError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


def sample_or_evaluate(cfg: DictConfig, output_dir: Path) -> float | None:
    """``task=sample`` / ``task=evaluate``: load ``run_dir``'s best checkpoint (or ``run_dir=<file>.safetensors``
    from ``task=export``), sample (and score) with the sampler, evaluator and (if chosen on this command line)
    method of this command. Under torchrun every rank samples its share into rank 0's output directory; rank 0
    alone writes and scores. Returns the first score, if any."""
    dist = DistributedContext.from_environment(cfg.sampler.device)
    seed_everything(cfg.seed)
    output_dir = shared_output_dir(dist, output_dir)
    source = require_run_dir(cfg, "a run directory holding checkpoints/, or a .safetensors")
    run_cfg = load_source_config(source)
    run_cfg.method = sampling_method_config(cfg, run_cfg)
    parts = build(run_cfg)
    sampler = make_sampler(cfg, parts.model, parts, source if source.is_dir() else None, dist)
    evaluator = instantiate(cfg.evaluator if cfg.task == "evaluate" else NO_EVALUATOR, _convert_="all")
    if source.suffix == ".safetensors":
        sampler.load_weights(source)
        loaded = "exported weights"
    else:
        best = sampler.load_checkpoint(instantiate(run_cfg.checkpoint)(run_dir=source), "best")
        loaded = f"best checkpoint, epoch {checkpoint.epoch(best)}"
    if dist.is_main:
        prepare_evaluator(evaluator, parts.data)
        save_run_config(cfg, output_dir, HydraConfig.get().overrides.task)
    with (FileLogger(output_dir) if dist.is_main else NullLogger()) as logger:
        logger.log(f"{cfg.task}: {source} ({loaded})")
        log_unavailable(evaluator, logger)
        scores = sample_or_stop(source, sampler, evaluator, parts.data, output_dir, logger)
    dist.close()
    if dist.is_main:
        print_run_files(output_dir)
    return None if not scores else next(iter(scores.values()))


def shared_output_dir(dist: DistributedContext, output_dir: Path) -> Path:
    """Rank 0's output directory on every rank (Hydra made one per rank; the others' empty ones are removed)."""
    shared = dist.broadcast_object(output_dir)
    if shared != output_dir:
        remove_if_empty(output_dir)
    return shared


def export(cfg: DictConfig, output_dir: Path) -> None:
    """``task=export run_dir=<run dir or checkpoint .pt>``: the best checkpoint's EMA weights and the run's
    config as ``<hydra.run.dir>/weights.safetensors``, to share and to sample from."""
    source = require_run_dir(cfg, "a run directory holding checkpoints/, or a checkpoint .pt")
    found = FileManager(source).best_or_last() if source.is_dir() else source
    path = export_weights(found, output_dir / "weights.safetensors")
    print(f"exported the EMA weights of {found} and its run config to {path}")
    print(f"sample from them with: python run.py task=sample run_dir={path}")


def posthoc_ema(cfg: DictConfig, output_dir: Path) -> float | None:
    """``task=posthoc_ema run_dir=<run trained with trainer.ema=posthoc> 'ema.std=[...]'``: reconstruct the EMA
    of each std from the run's snapshots (EDM2 Sec. 3), export each (``ema_std_<s>.safetensors``, samplable with
    ``task=sample run_dir=<file>``), and with an evaluator score each (``std_<s>/eval.json``) into one table and
    plot. Returns the best first score, if scored."""
    seed_everything(cfg.seed)
    source = require_run_dir(cfg, "a run directory trained with trainer.ema=posthoc")
    stds = [float(s) for s in cfg.ema.std]
    snapshots = FileManager(source).ema_snapshots()
    weights = reconstruct(snapshots, stds)  # refuses a std outside (0, 0.28), naming ema.std
    run_cfg = load_source_config(source)
    run_cfg.method = sampling_method_config(cfg, run_cfg)
    parts = build(run_cfg)
    evaluator = instantiate(cfg.evaluator, _convert_="all")
    prepare_evaluator(evaluator, parts.data)
    save_run_config(cfg, output_dir, HydraConfig.get().overrides.task)
    config, rows = OmegaConf.to_container(run_cfg, resolve=True), []
    with FileLogger(output_dir) as logger:
        log_unavailable(evaluator, logger)
        for std, state in zip(stds, weights):
            write_weights(state, config, output_dir / f"ema_std_{std:g}.safetensors",  # type: ignore[arg-type]
                          kind=f"posthoc std={std:g}", step=int(snapshots[-1]["step"]))
            sampler = make_sampler(cfg, parts.model, parts, source)
            sampler.model.load_state_dict(state)
            logger.log(f"post-hoc EMA std={std:g} (from {len(snapshots)} snapshots)")
            rows.append((std, sample_or_stop(source, sampler, evaluator, parts.data, output_dir / f"std_{std:g}",
                                             logger)))
        write_posthoc_table(rows, output_dir)
    print_run_files(output_dir)
    scored = [next(iter(scores.values())) for _, scores in rows if scores]
    return min(scored) if scored else None


if __name__ == "__main__":
    main()

"""Entry point: compose the experiment with Hydra, build every component through `_target_`, run the task.

    python run.py                                     # train on bundled digits, sample, score
    python run.py method=ddim schedule=cosine         # switch components
    python run.py -m trainer.lr=1e-4,3e-4             # a sweep: one run directory per job
    python run.py task=sample run_dir=outputs/...     # sample from an earlier run's best checkpoint
    python run.py task=evaluate run_dir=outputs/...   # score an earlier run
    torchrun --nproc_per_node=2 run.py                # data-parallel training

This is the only module that calls `hydra.utils.instantiate`; the `diffusion` package never sees a config.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from diffusion.cli import (
    Components,
    check_compatible,
    guard_user_errors,
    print_config_tree,
    print_run_files,
    save_run_config,
)
from diffusion.cli.errors import guard_command_line
from diffusion.distributed import DistributedContext
from diffusion.evaluation.scoring import epoch_evaluation, epoch_sample_grid, evaluate_samples, timed_sample
from diffusion.export import export_weights, load_exported
from diffusion.file_manager import (
    CheckpointError,
    FileManager,
    check_safe_targets,
    find_run_checkpoint,
    load_checkpoint,
    run_dir_of,
)
from diffusion.loggers import FileLogger, NullLogger, open_logger, run_name_from_overrides, sweep_group
from diffusion.sampler import Sampler, save_samples
from diffusion.seeding import seed_everything
from diffusion.trainer import TrainingDiverged, TrainingInterrupted
from diffusion.validation import ConfigError, check_choice, check_int

TASKS = ("train", "sample", "evaluate", "export")
TRAJECTORY_POINTS = 8  # columns of the denoising-trajectory strip
CONF_DIR = str(Path(__file__).resolve().parent / "conf")
_NONE = "diffusion.evaluation.NoneEvaluator"  # task=sample scores nothing


def main() -> None:
    """The command line. Hydra's own errors (an unknown option or key, an unparsable override, an output
    directory it cannot create) become one line and exit 2 like every other user error."""
    with guard_command_line():
        run_task()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def run_task(cfg: DictConfig) -> float | None:
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    with guard_user_errors(created_dir=output_dir):
        check_choice(cfg.task, "task", TASKS)
        check_int(cfg.seed, "seed")
        if cfg.task == "train":
            return train(cfg, output_dir)
        if cfg.task == "export":
            return export(cfg, output_dir)
        seed_everything(cfg.seed)
        return generate(cfg, output_dir)
    return None


def build(cfg: DictConfig, run_dir: Path) -> Components:
    """Instantiate data, model and method; each validates its arguments before anything is written."""
    data = instantiate(cfg.data, _convert_="all")
    choices = HydraConfig.get().runtime.choices
    check_compatible(data, get_class(cfg.model._target_), choices.get("data") or cfg.data._target_)
    model = instantiate(cfg.model, _convert_="all")
    method = instantiate(cfg.method, _convert_="all")
    return Components(data=data, model=model, method=method, run_dir=run_dir)


def make_sampler(cfg: DictConfig, model: Any, parts: Components) -> Sampler:
    return instantiate(cfg.sampler, _convert_="all")(
        model=model, method=parts.method, sample_shape=parts.data.sample_shape
    )


def train(cfg: DictConfig, output_dir: Path) -> float:
    dist = DistributedContext.from_environment(cfg.trainer.device)
    seed_everything(cfg.seed + dist.rank)  # each rank draws its own noise and timesteps
    resume_from, run_dir = shared_resume(dist, cfg.resume, output_dir)
    if run_dir != output_dir and output_dir.is_dir() and not any(output_dir.iterdir()):
        output_dir.rmdir()  # Hydra made it for this job; the run lives elsewhere (resumed, or rank 0's folder)
    parts = build(cfg, run_dir)
    file_manager = instantiate(cfg.checkpoint)(run_dir=run_dir)
    logger = open_run_logger(cfg, run_dir, resume_from) if dist.is_main else NullLogger()
    evaluator = instantiate(cfg.evaluator, _convert_="all")
    config = OmegaConf.to_container(cfg, resolve=True)
    trainer = instantiate(cfg.trainer, _convert_="all")(
        model=parts.model,
        method=parts.method,
        data=parts.data,
        file_manager=file_manager,
        logger=logger,
        seed=cfg.seed,
        run_config=config,
        distributed=dist,
    )
    if resume_from is not None:
        trainer.restore(resume_from)  # a checkpoint that does not fit this config fails before any write
    if dist.is_main:
        prepare_evaluator(evaluator, parts)  # an evaluator that does not fit the data fails before any write
    sampler = make_sampler(cfg, parts.model, parts)
    if trainer.monitor not in ("val_loss", "val/loss") and not evaluator.every_n_epochs:
        raise ConfigError(
            f"trainer.monitor={trainer.monitor} is computed only by evaluations during training: set "
            "evaluator.every_n_epochs=N, or trainer.monitor=val_loss"
        )
    ema_sampler = make_sampler(cfg, trainer.ema.shadow, parts)
    if evaluator.every_n_epochs:
        trainer.epoch_hooks.append(epoch_evaluation(evaluator, ema_sampler))
    if cfg.sample_every_n_epochs:
        every = check_int(cfg.sample_every_n_epochs, "sample_every_n_epochs", minimum=1)
        trainer.epoch_hooks.append(epoch_sample_grid(ema_sampler, run_dir, every))
    if dist.is_main:
        save_run_config(cfg, run_dir, HydraConfig.get().overrides.task)
        print_config_tree(cfg)
    with logger:
        if dist.is_main:
            logger.log_hyperparams(config)
            warn_if_unavailable(evaluator, logger)
        summary = train_or_stop(trainer)
        if dist.is_main:
            ckpt = sampler.load_checkpoint(file_manager, "best")
            logger.log(f"sampling from the best EMA checkpoint (epoch {ckpt['epoch']})")
            summary.update(sample_and_score(cfg, sampler, evaluator, parts, run_dir, logger) or {})
            logger.log_summary(summary)
    dist.close()
    if dist.is_main:
        print_run_files(run_dir)
    return objective(summary, trainer.monitor)


def train_or_stop(trainer: Any) -> dict[str, Any]:
    """Train; a stop signal or a diverging loss ends the process with its message (checkpoint kept)."""
    try:
        return trainer.train()
    except TrainingInterrupted as stop:
        print(stop, file=sys.stderr)
        sys.exit(stop.exit_code)
    except TrainingDiverged as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


def open_run_logger(cfg: DictConfig, run_dir: Path, resume_from: Path | None) -> Any:
    """The configured logger, told the run's name (from the overrides), its sweep group, its config and, when
    resuming, the logger run id kept in the checkpoint (so W&B continues the same run)."""
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    run_id = load_checkpoint(resume_from)["train_state"].get("logger_run_id") if resume_from else None
    return open_logger(
        instantiate(cfg.logger),
        run_dir=run_dir,
        name=run_name_from_overrides(list(hydra_cfg.overrides.task)),
        group=sweep_group(hydra_cfg.sweep.dir) if multirun else None,
        config=OmegaConf.to_container(cfg, resolve=True),
        run_id=run_id,
    )


def generate(cfg: DictConfig, output_dir: Path) -> float | None:
    """``task=sample`` / ``task=evaluate``: load ``run_dir``'s best checkpoint (or ``run_dir=<file>.safetensors``
    from ``task=export``), sample (and score) with the sampler, evaluator and (if chosen on this command line)
    method of this command."""
    if cfg.run_dir is None:
        raise ConfigError(f"task={cfg.task} needs run_dir=<a run directory holding checkpoints/, or a .safetensors>")
    source = Path(cfg.run_dir)
    exported = source.suffix == ".safetensors"  # weights written by task=export
    run_cfg = OmegaConf.create(load_exported(source)[1]) if exported else load_run_config(source)
    run_cfg.method = sampling_method_config(cfg, run_cfg)
    parts = build(run_cfg, output_dir)
    sampler = make_sampler(cfg, parts.model, parts)
    evaluator = instantiate(cfg.evaluator if cfg.task == "evaluate" else {"_target_": _NONE}, _convert_="all")
    if exported:
        sampler.load_weights(source)
        loaded = "exported weights"
    else:
        ckpt = sampler.load_checkpoint(instantiate(run_cfg.checkpoint)(run_dir=source), "best")
        loaded = f"best checkpoint, epoch {ckpt['epoch']}"
    prepare_evaluator(evaluator, parts)
    save_run_config(cfg, output_dir, HydraConfig.get().overrides.task)
    with FileLogger(output_dir) as logger:
        logger.log(f"{cfg.task}: {source} ({loaded})")
        warn_if_unavailable(evaluator, logger)
        scores = sample_and_score(cfg, sampler, evaluator, parts, output_dir, logger)
    print_run_files(output_dir)
    return None if not scores else next(iter(scores.values()))


def export(cfg: DictConfig, output_dir: Path) -> None:
    """``task=export run_dir=<run dir or checkpoint .pt>``: the best checkpoint's EMA weights and the run's
    config as ``<hydra.run.dir>/weights.safetensors``, to share and to sample from."""
    if cfg.run_dir is None:
        raise ConfigError("task=export needs run_dir=<a run directory holding checkpoints/, or a checkpoint .pt>")
    checkpoint = Path(cfg.run_dir)
    if checkpoint.is_dir():
        manager = FileManager(checkpoint)
        found = manager.checkpoint_path("best") or manager.checkpoint_path("last")
        if found is None:
            raise CheckpointError(f"run_dir={checkpoint}: no checkpoint in {manager.checkpoint_dir}")
        checkpoint = found
    path = export_weights(checkpoint, output_dir / "weights.safetensors")
    print(f"exported the EMA weights of {checkpoint} and its run config to {path}")
    print(f"sample from them with: python run.py task=sample run_dir={path}")


def prepare_evaluator(evaluator: Any, parts: Components) -> None:
    """Fit the evaluator to the data; it raises ConfigError when they do not match, so call it before writing."""
    if evaluator.enabled:
        evaluator.prepare(parts.data)


def warn_if_unavailable(evaluator: Any, logger: Any) -> None:
    if evaluator.enabled and evaluator.unavailable_reason:
        logger.log(f"warning: {evaluator.unavailable_reason}")


def sample_and_score(
    cfg: DictConfig, sampler: Sampler, evaluator: Any, parts: Components, directory: Path, logger: Any
) -> dict[str, float] | None:
    """One sampling pass serves the picture, ``samples.npz`` and the evaluation (the larger of the counts)."""
    count = sampler.num_samples
    if evaluator.available:
        count = max(count, evaluator.num_samples)
    record = trajectory_timesteps(sampler.method.timesteps(sampler.steps, sampler.timestep_spacing))
    result, seconds_per_sample = timed_sample(sampler, count, record)
    reference = None if parts.data.kind == "image" else parts.data.load().val
    written = save_samples(result, directory, reference=reference, grid_samples=sampler.num_samples,
                           nrow=sampler.grid_row_length(sampler.num_samples))
    logger.log_image("samples", written[1])
    logger.log(f"sampled {count} in {seconds_per_sample * count:.1f} s ({seconds_per_sample * 1e3:.2f} ms/sample)")
    payload = evaluate_samples(evaluator, sampler, result, seconds_per_sample, directory, logger)
    if payload is None:
        return None
    return {name: entry["value"] for name, entry in payload.items() if isinstance(entry, dict)}


def objective(summary: dict[str, Any], monitor: str) -> float:
    """What a sweeper minimises: the monitored metric's best value (validation loss unless ``trainer.monitor``)."""
    return float(summary["best_" + monitor.replace("/", "_")])


def trajectory_timesteps(sequence: list[int]) -> list[int]:
    """About ``TRAJECTORY_POINTS`` evenly spread timesteps of the sampling sequence, plus the final sample."""
    stride = max(1, len(sequence) // (TRAJECTORY_POINTS - 1))
    return sequence[::stride][: TRAJECTORY_POINTS - 1] + [-1]


def shared_resume(dist: DistributedContext, resume: str | None, output_dir: Path) -> tuple[Path | None, Path]:
    """Rank 0 resolves the run directory and checkpoint; every rank gets the same answer (or the same error)."""
    answer: Any = None
    if dist.is_main:
        try:
            answer = resolve_resume(resume, output_dir)
        except ConfigError as error:
            answer = error
    answer = dist.broadcast_object(answer)
    if isinstance(answer, ConfigError):
        raise answer
    return answer


def resolve_resume(resume: str | None, output_dir: Path) -> tuple[Path | None, Path]:
    """Where training continues from, and the run directory it writes to.

    ``auto`` continues ``output_dir`` from its newest intact checkpoint (a requeued job with a fixed
    ``hydra.run.dir``), else starts fresh there; a path continues that run in its own directory.
    """
    has_run = (output_dir / "checkpoints").is_dir() and any((output_dir / "checkpoints").glob("*.pt"))
    if resume is None:
        if has_run:
            raise ConfigError(
                f"{output_dir} already holds a run; pass resume=auto to continue it or choose another hydra.run.dir"
            )
        return None, output_dir
    if resume == "auto" and not has_run:
        return None, output_dir
    checkpoint, skipped = find_run_checkpoint(output_dir if resume == "auto" else resume)
    for line in skipped:
        print(f"warning: {line}; falling back to an older checkpoint", file=sys.stderr)
    if skipped:
        print(f"resuming from {checkpoint}", file=sys.stderr)
    return checkpoint, run_dir_of(checkpoint)


def load_run_config(run_dir: Path) -> DictConfig:
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"run_dir={run_dir}: no config.yaml there; is it a run directory made by run.py?")
    cfg = OmegaConf.load(path)
    check_safe_targets(OmegaConf.to_container(cfg, resolve=False), path)  # instantiating it must not run foreign code
    return cfg  # type: ignore[return-value]


SAMPLING_METHOD_KEYS = ("clip_denoised",)  # method keys that change sampling, not what the network learned


def sampling_method_config(cfg: DictConfig, run_cfg: DictConfig) -> DictConfig:
    """The run's trained diffusion (schedule, T, prediction) with the sampling method chosen on this command
    line (``method=ddim``), if one was chosen, and ``method.clip_denoised`` if given on this command line."""
    method = run_cfg.method.copy()
    keys = {o.split("=")[0].lstrip("+~") for o in HydraConfig.get().overrides.task}
    if "method" in keys:
        method._target_ = cfg.method._target_
    for key in SAMPLING_METHOD_KEYS:
        if f"method.{key}" in keys:
            method[key] = cfg.method[key]
    return method


if __name__ == "__main__":
    main()

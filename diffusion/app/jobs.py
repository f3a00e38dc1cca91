"""One Hydra job: check the task, set the process's thread budget, build the components, run the task.

Each ``run_*`` reads its task's config, builds the components (:func:`~diffusion.app.build.build`) and hands
them, with plain settings, to its module in :mod:`diffusion.tasks`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from diffusion.app.build import NO_EVALUATOR, build, build_network, build_scoring, scores_nothing
from diffusion.app.distill_config import check_distill_option, distill_run_config
from diffusion.app.errors import guard_command_line, guard_user_errors
from diffusion.app.hydra_run import HydraRun, start_job
from diffusion.app.latent_jobs import run_encode, run_train_autoencoder
from diffusion.app.reflow_config import reflow_run_config
from diffusion.app.run_config import (
    checked_run_config,
    command_line_keys,
    follow_run_sampler,
    load_source_config,
    require_run_dir,
    sampled_config,
    sampling_method_config,
    search_hooks,
)
from diffusion.app.run_files import print_config_tree, save_run_config
from diffusion.app.tune_config import tune_run_config, with_teacher
from diffusion.runtime.checks import ConfigError, check_bool, check_choice, check_int
from diffusion.runtime.devices import resolve_device
from diffusion.runtime.distributed import DistributedContext, exit_process, joined_process_group
from diffusion.runtime.seeding import seed_everything
from diffusion.runtime.threads import busy_warning, cpu_limit, thread_budget
from diffusion.storage.atomic import atomic_write_text
from diffusion.tasks import (compare, export, posthoc_ema, reference_stats, reflow, sample, score_file,
                             summary, train, tune)
from diffusion.tasks.components import Components, RunSettings
from diffusion.tasks.ode_scores import LikelihoodSettings, StraightnessSettings

# Keys that moved, as typed on an older command line -> their home now.
MOVED_KEYS = {"trainer.num_threads": "num_threads"}  # process-wide, not a trainer setting


@contextmanager
def command_line() -> Iterator[None]:
    """Around the Hydra entry point: one-line user errors (:func:`guard_command_line`), and moved keys typed
    under their old name take their new one. A torchrun rank then ends through
    :func:`~diffusion.runtime.distributed.exit_process` (PyTorch's exit race with gloo's worker threads)."""
    for index, word in enumerate(sys.argv[1:], start=1):
        key, equals, value = word.partition("=")
        if equals and key in MOVED_KEYS:
            sys.argv[index] = f"{MOVED_KEYS[key]}={value}"
    try:
        with guard_command_line():
            yield
    except SystemExit as stop:
        if joined_process_group():
            exit_process(stop.code)
        raise
    if joined_process_group():
        exit_process(0)


def run_job(cfg: DictConfig) -> float | None:
    """The task ``cfg.task`` of the Hydra job now running; returns what a sweeper minimises (if anything)."""
    job = start_job(HydraRun.read())
    with guard_user_errors(created_dir=job.output_dir):
        check_choice(cfg.task, "task", tuple(TASKS))
        check_distill_option(cfg)
        check_task_keys(cfg.task, job.keys)
        check_ode_score_task(cfg)
        check_int(cfg.seed, "seed")
        apply_thread_budget(cfg, job)
        return TASKS[cfg.task](cfg, job)
    return None


# Top-level keys that only some tasks read (``resume`` is not among them: a requeuing launcher's sweep passes
# resume=auto to every job, whatever its task).
TASK_KEYS = {"run_dir": ("sample", "evaluate", "export", "posthoc_ema", "distill", "compare", "reflow", "tune"),
             "tune": ("tune",), "reflow": ("reflow",), "encode": ("encode",), "ema": ("posthoc_ema",)}


def check_task_keys(task: str, keys: set[str]) -> None:
    """A key of :data:`TASK_KEYS` given on the command line of a task that does not read it.

    Raises:
        ConfigError: naming the key and the tasks that read it.
    """
    for key in sorted(keys):
        tasks = TASK_KEYS.get(key.split(".")[0], (task,))
        if task not in tasks:
            raise ConfigError(f"{key} is read only by task={'|'.join(tasks)} (this command is task={task}); drop "
                              f"{key}")


# Tasks that neither train nor sample (a second or two of work): a busy machine does not slow them enough to warn.
LIGHT_TASKS = frozenset({"summary", "export", "compare"})


def apply_thread_budget(cfg: DictConfig, job: HydraRun) -> None:
    """One intra-op thread count for the process (training, sampling, scoring): the CPUs it may use divided
    among the jobs a launcher runs at once on this node; said on the console, with a warning on a busy machine
    (not for the :data:`LIGHT_TASKS`)."""
    budget = thread_budget(cfg.get("num_threads", "auto"), launcher=job.launcher)
    torch.set_num_threads(budget.threads)
    print(budget.reason)
    warning = None if cfg.task in LIGHT_TASKS else busy_warning(cpu_limit()[0], budget.threads)
    if warning:  # on stdout with the run's log, so that stderr keeps one line per error
        print(f"warning: {warning}")


def run_train(cfg: DictConfig, job: HydraRun) -> float:
    """``task=train``: train (or resume), then sample from the best EMA checkpoint and score."""
    check_shared_trainer_keys(cfg.trainer)
    dist = DistributedContext.from_environment(cfg.trainer.device)
    seed_everything(cfg.seed + dist.rank)  # each rank draws its own noise and timesteps
    parts = build(cfg, job, align=True)
    return train.train(parts, training_settings(cfg, job, parts, cfg.trainer.max_steps), dist)


def run_distill(cfg: DictConfig, job: HydraRun) -> float:
    """``task=distill run_dir=<teacher run> distill=progressive|consistency``: a training run whose model starts as
    the teacher's best EMA weights and whose loss is the distillation's, for its rounds' total steps."""
    teacher = distill_run_config(cfg)
    check_shared_trainer_keys(teacher.cfg.trainer)
    dist = DistributedContext.from_environment(teacher.cfg.trainer.device)
    seed_everything(teacher.cfg.seed + dist.rank)
    parts = build(teacher.cfg, job, teacher=teacher)
    settings = training_settings(teacher.cfg, job, parts, parts.method.total_steps)  # type: ignore[attr-defined]
    return train.train(parts, settings, dist, distill=True)


def run_reflow(cfg: DictConfig, job: HydraRun) -> float:
    """``task=reflow run_dir=<flow run>``: the teacher's ODE pairs (``reflow.*``, ``sampler.*``), then a training run
    on them whose network starts as the teacher's best EMA weights (:func:`diffusion.tasks.reflow.reflow`)."""
    teacher = reflow_run_config(cfg)
    check_shared_trainer_keys(teacher.cfg.trainer)
    dist = DistributedContext.from_environment(teacher.cfg.trainer.device)
    seed_everything(cfg.seed)
    parts = build(teacher.cfg, job)
    settings = training_settings(teacher.cfg, job, parts, teacher.cfg.trainer.max_steps)
    settings.source = teacher.teacher_dir
    return reflow.reflow(parts, settings, dist, cfg.reflow.num_pairs, cfg.reflow.chunk_size)


def run_tune(cfg: DictConfig, job: HydraRun) -> float:
    """``task=tune run_dir=<EDM run>``: ECT, the run's network tuned into a 1-2 step consistency model (``tune.*``);
    with ``method=scm`` (and an EDM or flow run), sCD: a TrigFlow consistency model trained on the run's ODE."""
    tuned = tune_run_config(cfg, job)
    check_shared_trainer_keys(tuned.cfg.trainer)
    dist = DistributedContext.from_environment(tuned.cfg.trainer.device)
    seed_everything(tuned.cfg.seed + dist.rank)
    parts = build(tuned.cfg, job)
    parts = with_teacher(parts, tuned) if tuned.distill else parts
    settings = training_settings(tuned.cfg, job, parts, tuned.cfg.trainer.max_steps)
    return tune.tune(parts, settings, dist, None if tuned.distill else tuned.teacher_weights)


def check_shared_trainer_keys(trainer: DictConfig) -> None:
    """The trainer keys the sampler follows (``device``, ``progress``), checked under the trainer's name, as the
    epoch hooks' sampler is built first.

    Raises:
        ConfigError: naming ``trainer.device`` or ``trainer.progress``.
    """
    resolve_device(trainer.device)
    check_bool(trainer.progress, "trainer.progress")


def training_settings(cfg: DictConfig, job: HydraRun, parts: Components, max_steps: int | None) -> RunSettings:
    return RunSettings(
        output_dir=job.output_dir, seed=cfg.seed, resume=cfg.resume, max_steps=max_steps, config=parts.config,
        save_config=lambda run_dir: save_run_config(parts.config, run_dir, job.overrides),
        print_config=lambda: print_config_tree(parts.config),
        search_hooks=lambda run_dir: search_hooks(cfg, cfg.trainer.monitor, run_dir),
    )


def run_sample(cfg: DictConfig, job: HydraRun) -> float | None:
    """``task=sample`` / ``task=evaluate``: ``run_dir``'s best checkpoint (or ``run_dir=<file>.safetensors``)
    sampled (and scored) with the run's sampler and evaluator under this command line's keys and, if chosen on this
    command line, method (:func:`~diffusion.app.run_config.follow_run_sampler`)."""
    dist = DistributedContext.from_environment(cfg.sampler.device)
    seed_everything(cfg.seed)
    source = require_run_dir(cfg, "a run directory holding checkpoints/, or a .safetensors")
    if source.suffix == ".npz":
        return run_score_file(cfg, job, source)
    run_cfg = source_config(cfg, source)
    evaluator = evaluation_config(cfg, run_cfg, job) if cfg.task == "evaluate" else NO_EVALUATOR
    parts = build(run_cfg, job, command=cfg, evaluator=evaluator)
    return sample.sample_or_evaluate(parts, source_settings(cfg, job, parts, source, evaluator), dist)


def run_score_file(cfg: DictConfig, job: HydraRun, source: Path) -> float | None:
    """``task=evaluate run_dir=<samples .npz>``: a sample file made elsewhere (the ADM suite's, or a samples.npz),
    scored with this command line's ``data=`` and its evaluator into this command's output folder."""
    if cfg.task != "evaluate":
        raise ConfigError(f"run_dir={source} is a sample file: score it with task=evaluate (task={cfg.task} needs a "
                          "run directory or a .safetensors)")
    if not source.is_file():
        raise ConfigError(f"run_dir={source}: no such sample file")
    for key, settings in zip(("likelihood", "straightness"), ode_score_settings(cfg)):
        if settings.enabled:
            raise ConfigError(f"evaluator.{key}=true needs a model; run_dir={source} holds samples only")
    data, evaluator = build_scoring(cfg)
    settings = RunSettings(output_dir=job.output_dir, seed=cfg.seed, source=source, label=cfg.task,
                           save_config=lambda directory: save_run_config(cfg, directory, job.overrides))
    return score_file.score_sample_file(data, evaluator, settings)


def evaluation_config(cfg: DictConfig, run_cfg: DictConfig, job: HydraRun) -> DictConfig:
    """The evaluator ``task=evaluate`` (and ``posthoc_ema``) scores with: the command line's when it chooses one
    (``evaluator=`` or ``data=``), else the run's own (it fits the run's data), with this command line's
    ``evaluator.*`` keys on top.

    Raises:
        ConfigError: ``task=evaluate`` with nothing to score with (the run's evaluator, or the one chosen, is none,
            and neither ``evaluator.likelihood`` nor ``evaluator.straightness`` is asked for).
    """
    keys = job.keys
    own = run_cfg.get("evaluator")
    if "evaluator" in keys or "data" in keys or own is None:  # None: a run saved before its evaluator was
        chosen = cfg.get("evaluator", NO_EVALUATOR)
    else:
        chosen = own.copy()
        for key in keys:
            if key.startswith("evaluator."):
                OmegaConf.update(chosen, key.removeprefix("evaluator."), OmegaConf.select(cfg, key), force_add=True)
    ode_scores = any(settings.enabled for settings in ode_score_settings(cfg))  # scored without an evaluator
    if cfg.task == "evaluate" and scores_nothing(chosen) and not ode_scores:
        raise ConfigError("task=evaluate has no evaluator to score with (run_dir's run was trained with "
                          "evaluator=none, or this command line chose it); choose one, e.g. evaluator=digits, or use "
                          "task=sample")
    return chosen


def run_posthoc_ema(cfg: DictConfig, job: HydraRun) -> float | None:
    """``task=posthoc_ema run_dir=<run trained with trainer.ema=posthoc> 'ema.std=[...]'``, each EMA length scored
    with the run's evaluator unless this command line chooses one (``evaluator=`` or ``data=``)."""
    seed_everything(cfg.seed)
    source = require_run_dir(cfg, "a run directory trained with trainer.ema=posthoc")
    run_cfg = source_config(cfg, source)
    evaluator = evaluation_config(cfg, run_cfg, job)  # as task=evaluate: the run's own unless chosen here
    parts = build(run_cfg, job, command=cfg, evaluator=evaluator)
    settings = source_settings(cfg, job, parts, source, evaluator)
    settings.ema_stds = [float(s) for s in cfg.ema.std]
    return posthoc_ema.posthoc_ema(parts, settings)


def run_export(cfg: DictConfig, job: HydraRun) -> None:
    """``task=export run_dir=<run dir or checkpoint .pt>``: ``<hydra.run.dir>/weights.safetensors``."""
    source = require_run_dir(cfg, "a run directory holding checkpoints/, or a checkpoint .pt")
    export.export(RunSettings(output_dir=job.output_dir, source=source))


def run_compare(cfg: DictConfig, job: HydraRun) -> None:
    """``task=compare run_dir=[a,b,...]``: each evaluated run's scores against the first's, tie or not; printed and
    written to ``<hydra.run.dir>/compare.md``."""
    run_dirs = list(cfg.run_dir) if OmegaConf.is_list(cfg.run_dir) else [cfg.run_dir]
    if None in run_dirs:
        raise ConfigError("task=compare needs run_dir=[<evaluated run>,<evaluated run>,...]")
    table = compare.compare([str(path) for path in run_dirs])
    print(table)
    job.output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(job.output_dir / "compare.md", table + "\n")


def run_reference_stats(cfg: DictConfig, job: HydraRun) -> None:
    """``task=reference_stats data=<data set> evaluator=<feature network>``: ``<hydra.run.dir>/reference_stats.npz``
    (``mu``, ``sigma`` of the training images' features), for ``evaluator.reference_stats`` and the FID tools."""
    seed_everything(cfg.seed)
    data, evaluator = build_scoring(cfg)
    name = job.choices.get("evaluator") or cfg.evaluator._target_
    reference_stats.reference_stats(evaluator, data, job.output_dir, name)


def run_summary(cfg: DictConfig, job: HydraRun) -> None:
    """``task=summary``: the network's parameters and forward FLOPs for one sample, built on the meta device."""
    with torch.device("meta"):
        data, _, model = build_network(cfg, job)
    summary.summary(model, data.sample_shape)


def source_config(cfg: DictConfig, source: object) -> DictConfig:
    """The config of the run read (``run_dir``), sampled with the method this command line chose, if any, and
    with the run's own sampling settings where this command line leaves them open."""
    run_cfg = checked_run_config(cfg, load_source_config(source), command_line_keys())  # type: ignore[arg-type]
    run_cfg.method = sampling_method_config(cfg, run_cfg)
    follow_run_sampler(cfg, run_cfg)
    return run_cfg


def source_settings(cfg: DictConfig, job: HydraRun, parts: Components, source: object,
                    evaluator: DictConfig) -> RunSettings:
    """The settings of a job that reads an earlier run; its ``config.yaml`` records the run's data, network and
    method that it sampled (:func:`~diffusion.app.run_config.sampled_config`), not this command's defaults."""
    likelihood, straightness = ode_score_settings(cfg)
    used = sampled_config(cfg, parts.config, evaluator)
    return RunSettings(
        output_dir=job.output_dir, seed=cfg.seed, source=source, config=parts.config,  # type: ignore[arg-type]
        save_config=lambda directory: save_run_config(used, directory, job.overrides), label=cfg.task,
        likelihood=likelihood, straightness=straightness,
    )


def ode_score_settings(cfg: DictConfig) -> tuple[LikelihoodSettings, StraightnessSettings]:
    """``evaluator.likelihood`` / ``evaluator.straightness`` and their options, from this command line's evaluator."""
    node = cfg.get("evaluator") or {}

    def fields(names: dict[str, str]) -> dict[str, object]:  # config key -> settings field, the keys it sets
        return {field: node[key] for key, field in names.items() if key in node}

    return (LikelihoodSettings(**fields({"likelihood": "enabled", "hutchinson_samples": "hutchinson_samples",
                                         "dequantization": "dequantization", "likelihood_samples": "num_samples"})),
            StraightnessSettings(**fields({"straightness": "enabled", "straightness_steps": "steps",
                                           "straightness_samples": "num_samples"})))


def check_ode_score_task(cfg: DictConfig) -> None:
    """``evaluator.likelihood`` and ``evaluator.straightness`` belong to ``task=evaluate``.

    Raises:
        ConfigError: naming the key, with another task.
    """
    for key, settings in zip(("likelihood", "straightness"), ode_score_settings(cfg)):
        if settings.enabled and cfg.task != "evaluate":
            raise ConfigError(f"evaluator.{key}=true is scored by task=evaluate (got task={cfg.task}); "
                              f"run task=evaluate run_dir=<run> evaluator.{key}=true")


TASKS: dict[str, Callable[[DictConfig, HydraRun], float | None]] = {
    "train": run_train, "sample": run_sample, "evaluate": run_sample, "export": run_export,
    "posthoc_ema": run_posthoc_ema, "distill": run_distill, "summary": run_summary, "compare": run_compare,
    "reflow": run_reflow, "reference_stats": run_reference_stats, "tune": run_tune,
    "train_autoencoder": run_train_autoencoder, "encode": run_encode,
}

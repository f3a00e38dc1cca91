"""Entry point: compose the experiment with Hydra, build every component through `_target_`, run the task.

    python run.py                                   # train on bundled digits, then sample a grid
    python run.py method=ddim schedule=cosine       # switch components
    python run.py -m trainer.lr=1e-4,3e-4           # a sweep: one run directory per job
    python run.py task=sample run_dir=outputs/...   # sample from an earlier run's best checkpoint

This is the only module that calls `hydra.utils.instantiate`; the `diffusion` package never sees a config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from diffusion.cli import Components, check_compatible, guard_user_errors, print_run_files, save_run_config
from diffusion.file_manager import find_run_checkpoint, run_dir_of
from diffusion.sampler import SampleResult, save_samples
from diffusion.seeding import seed_everything
from diffusion.validation import ConfigError, check_choice, check_int

TASKS = ("train", "sample")
TRAJECTORY_POINTS = 8  # columns of the denoising-trajectory strip


CONF_DIR = str(Path(__file__).resolve().parent / "conf")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    with guard_user_errors(created_dir=output_dir):
        check_choice(cfg.task, "task", TASKS)
        check_int(cfg.seed, "seed")
        seed_everything(cfg.seed)
        if cfg.task == "sample":
            return sample(cfg, output_dir)
        return train(cfg, output_dir)
    return None


def build(cfg: DictConfig, run_dir: Path) -> Components:
    """Instantiate data, model and method; validates each before anything is written."""
    data = instantiate(cfg.data, _convert_="all")
    data_choice = HydraConfig.get().runtime.choices.get("data") or cfg.data._target_
    check_compatible(data, get_class(cfg.model._target_), data_choice)
    model = instantiate(cfg.model, _convert_="all")
    method = instantiate(cfg.method, _convert_="all")
    return Components(data=data, model=model, method=method, run_dir=run_dir)


def train(cfg: DictConfig, output_dir: Path) -> float:
    resume_from, run_dir = resolve_resume(cfg.resume, output_dir)
    parts = build(cfg, run_dir)
    if run_dir != output_dir and output_dir.is_dir() and not any(output_dir.iterdir()):
        output_dir.rmdir()  # Hydra made it for this job; the resumed run writes into its own directory
    file_manager = instantiate(cfg.checkpoint)(run_dir=run_dir)
    logger = instantiate(cfg.logger)(run_dir=run_dir)
    config = OmegaConf.to_container(cfg, resolve=True)
    trainer = instantiate(cfg.trainer, _convert_="all")(
        model=parts.model,
        method=parts.method,
        data=parts.data,
        file_manager=file_manager,
        logger=logger,
        run_config=config,
    )
    sampler = instantiate(cfg.sampler, _convert_="all")(
        model=parts.model, method=parts.method, sample_shape=parts.data.sample_shape
    )
    save_run_config(cfg, run_dir, HydraConfig.get().overrides.task)
    with logger:
        logger.log_hyperparams(config)
        summary = trainer.train(resume_from=resume_from)
        ckpt = sampler.load_checkpoint(file_manager, "best")
        logger.log(f"sampling {sampler.num_samples} from the best EMA checkpoint (epoch {ckpt['epoch']})")
        written = write_samples(sampler, parts, run_dir)
        logger.log_image("samples", written[1], step=trainer.state.global_step)
        logger.log_summary(summary)
    print_run_files(run_dir)
    return float(summary["best_" + trainer.monitor.replace("/", "_")])


def sample(cfg: DictConfig, output_dir: Path) -> None:
    """Sample from ``run_dir``'s best checkpoint with the sampler (and method, if given) of this command."""
    if cfg.run_dir is None:
        raise ConfigError("task=sample needs run_dir=<a run directory holding checkpoints/>")
    source = Path(cfg.run_dir)
    run_cfg = load_run_config(source)
    run_cfg.method = sampling_method_config(cfg, run_cfg)
    parts = build(run_cfg, output_dir)
    file_manager = instantiate(run_cfg.checkpoint)(run_dir=source)
    sampler = instantiate(cfg.sampler, _convert_="all")(
        model=parts.model, method=parts.method, sample_shape=parts.data.sample_shape
    )
    ckpt = sampler.load_checkpoint(file_manager, "best")
    print(f"sampling {sampler.num_samples} from {source} (best checkpoint, epoch {ckpt['epoch']})")
    save_run_config(cfg, output_dir, HydraConfig.get().overrides.task)
    write_samples(sampler, parts, output_dir)
    print_run_files(output_dir)
    return None


def write_samples(sampler: Any, parts: Components, directory: Path) -> list[Path]:
    record = trajectory_timesteps(sampler.method.timesteps(sampler.steps, sampler.timestep_spacing))
    result: SampleResult = sampler.sample(record_timesteps=record)
    reference = None if parts.data.kind == "image" else parts.data.load().val
    return save_samples(result, directory, reference=reference)


def trajectory_timesteps(sequence: list[int]) -> list[int]:
    """About ``TRAJECTORY_POINTS`` evenly spread timesteps of the sampling sequence, plus the final sample."""
    stride = max(1, len(sequence) // (TRAJECTORY_POINTS - 1))
    return sequence[::stride][: TRAJECTORY_POINTS - 1] + [-1]


def resolve_resume(resume: str | None, output_dir: Path) -> tuple[Path | None, Path]:
    """Where training continues from, and the run directory it writes to.

    ``auto`` continues ``output_dir`` when it holds ``checkpoints/last.pt`` (a requeued job with a fixed
    ``hydra.run.dir``), else starts fresh there; a path continues that run in its own directory.
    """
    last = output_dir / "checkpoints" / "last.pt"
    if resume is None:
        if last.exists():
            raise ConfigError(
                f"{output_dir} already holds a run; pass resume=auto to continue it or choose another hydra.run.dir"
            )
        return None, output_dir
    if resume == "auto":
        return (last if last.exists() else None), output_dir
    checkpoint = find_run_checkpoint(resume)
    return checkpoint, run_dir_of(checkpoint)


def load_run_config(run_dir: Path) -> DictConfig:
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"run_dir={run_dir}: no config.yaml there; is it a run directory made by run.py?")
    return OmegaConf.load(path)  # type: ignore[return-value]


def sampling_method_config(cfg: DictConfig, run_cfg: DictConfig) -> DictConfig:
    """The run's trained diffusion (schedule, T, prediction) with the sampling method chosen on this command
    line (``method=ddim``), if one was chosen."""
    method = run_cfg.method.copy()
    chosen = any(o.split("=")[0].lstrip("+~") == "method" for o in HydraConfig.get().overrides.task)
    if chosen:
        method._target_ = cfg.method._target_
    return method


if __name__ == "__main__":
    main()

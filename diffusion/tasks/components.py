"""What a task is handed: the run's built components and this command's plain settings (made by
``diffusion.app.build``; a task never sees the config). Factories stand where only the task knows an input.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from torch import nn

from diffusion.data.base import BaseData
from diffusion.evaluation.evaluators import BaseEvaluator
from diffusion.loggers.base import BaseLogger
from diffusion.methods.base import BaseMethod
from diffusion.runtime.distributed import DistributedContext
from diffusion.sampling.sampler import Sampler
from diffusion.storage.file_manager import FileManager
from diffusion.tasks.ode_scores import LikelihoodSettings, StraightnessSettings
from diffusion.training.trainer import EpochEndHook, Trainer


class SamplerFactory(Protocol):
    """The configured sampler for ``model``; ``run_dir`` is where a guide named by checkpoint is looked up, ``dist``
    splits the samples over the ranks, ``overrides`` replace sampler settings (``steps=4``)."""

    def __call__(self, model: nn.Module, run_dir: Path | None = None, dist: DistributedContext | None = None,
                 **overrides: Any) -> Sampler: ...


@dataclass
class Components:
    """Every component of a run: the data set, the network, the method the trainer trains (the formulation, or
    the distillation of a teacher into it; the sampler samples with the formulation), the evaluator, and factories
    for the sampler, trainer, checkpoints and logger."""

    data: BaseData
    model: nn.Module
    method: BaseMethod
    evaluator: BaseEvaluator
    make_sampler: SamplerFactory
    make_trainer: Callable[..., Trainer]  # the trainer settings; the task passes the parts and the run's hooks
    make_file_manager: Callable[[Path], FileManager]
    make_logger: Callable[[Path, str | None], BaseLogger]  # (run dir, logger run id to continue)
    config: dict[str, Any] = field(default_factory=dict)  # the resolved config they were built from
    training_data: BaseData | None = None  # what the trainer reads when it is not ``data`` (reflow's pairs)


@dataclass
class RunSettings:
    """This command's settings a task reads: its seed and device, where it writes, what it reads, and how the
    run's config is recorded (``save_config(dir)`` writes ``config.yaml`` and ``overrides.yaml``)."""

    output_dir: Path
    seed: int = 0
    device: str = "auto"
    source: Path | None = None  # run_dir: the run (or exported weights) read by sample, evaluate, export, ...
    resume: str | None = None
    max_steps: int | None = None  # the run's optimizer steps (a distillation's: its rounds' total)
    config: dict[str, Any] = field(default_factory=dict)  # resolved; stored in checkpoints and exported weights
    save_config: Callable[[Path], None] = lambda directory: None
    print_config: Callable[[], None] = lambda: None
    search_hooks: Callable[[Path], Sequence[EpochEndHook]] = lambda run_dir: ()  # an Optuna trial's report
    ema_stds: Sequence[float] = ()  # task=posthoc_ema: the EMA lengths to reconstruct
    label: str = ""  # the task's name in its log (``sample``, ``evaluate``)
    likelihood: LikelihoodSettings = field(default_factory=LikelihoodSettings)  # task=evaluate: the NLL too
    straightness: StraightnessSettings = field(default_factory=StraightnessSettings)  # and a flow's S(Z)

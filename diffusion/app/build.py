"""One ``build(cfg)``: every component of a run made from the composed config through its ``_target_``.

Entry point, experiments and tests all build here. Where the config leaves it open, what the data implies is
derived from the built data set: the network's input shape and ``method.clip_denoised=false`` for points.
"""

from __future__ import annotations

import copy
import inspect
from functools import partial
from pathlib import Path
from typing import Any

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from diffusion.app.distill_config import DistillRun
from diffusion.app.hydra_run import HydraRun
from diffusion.app.latent_config import autoencoder_implied, build_data, check_command_autoencoder, latent_decoder
from diffusion.app.method_config import formulation_config, repa_settings
from diffusion.app.run_config import load_guide_model
from diffusion.data.base import BaseData
from diffusion.data.latents import LatentData
from diffusion.evaluation.evaluators import BaseEvaluator, NoneEvaluator
from diffusion.evaluation.patch_features import encoder_identity, load_patch_encoder
from diffusion.loggers import open_logger, run_name_from_overrides, sweep_group
from diffusion.loggers.base import BaseLogger
from diffusion.methods.base import BaseMethod
from diffusion.runtime.checks import ConfigError
from diffusion.runtime.distributed import DistributedContext
from diffusion.sampling.sampler import Decoder, Sampler
from diffusion.storage import checkpoint
from diffusion.storage.file_manager import load_checkpoint
from diffusion.tasks.components import Components
from diffusion.tasks.ode_scores import ODE_SCORE_KEYS
from diffusion.training.repa import RepresentationAlignment

NO_EVALUATOR = OmegaConf.create({"_target_": "diffusion.evaluation.NoneEvaluator"})  # task=sample scores nothing


def build(cfg: DictConfig, job: HydraRun | None = None, *, command: DictConfig | None = None,
          evaluator: DictConfig | None = None, teacher: DistillRun | None = None, align: bool = False) -> Components:
    """Instantiate data, network and method (with what the data implies), evaluator, and the factories of sampler,
    trainer, checkpoints and logger; each checks its arguments here, before anything is written. ``command``: the
    config whose sampler (and evaluator) are used when sampling an earlier run; ``teacher``: build a distillation;
    ``align``: train with REPA where ``method.repa.weight`` > 0 (:func:`make_alignment`).
    """
    job = job or HydraRun(output_dir=Path("."))
    sampled = command is not None  # an earlier run's config, sampled with this command line's settings
    command = cfg if command is None else command
    alignment = repa_settings(cfg.method) if align else None
    data, cfg, model = build_network(cfg, job, features=alignment is not None)
    if sampled:
        check_command_autoencoder(cfg, command, job.keys)
    # What samples: the student's method when distilling.
    method = instantiate(checked(formulation_config(cfg.method), "method"), _convert_="all")
    method.check_network(model)
    trained = method if teacher is None else make_distillation(cfg, model, method, teacher)
    if alignment is not None:
        trained = make_alignment(alignment, method, model, data)
    return Components(
        data, model, trained,
        evaluator=make_evaluator(command.get("evaluator", NO_EVALUATOR) if evaluator is None else evaluator),
        make_sampler=SamplerFactory(command, method, data.sample_shape, latent_decoder(cfg, data)),
        make_trainer=partial(_instantiate_partial, cfg.trainer),
        make_file_manager=lambda run_dir: instantiate(cfg.checkpoint)(run_dir=run_dir),
        make_logger=partial(open_run_logger, cfg, job),
        config=OmegaConf.to_container(cfg, resolve=True),  # type: ignore[arg-type]
    )


def build_scoring(cfg: DictConfig) -> tuple[BaseData, BaseEvaluator]:
    """The data set and evaluator alone: what scoring a sample file made elsewhere needs (no network, no method)."""
    data = instantiate(cfg.data, _convert_="all")
    return data, make_evaluator(cfg.get("evaluator", NO_EVALUATOR))


def scores_nothing(node: DictConfig) -> bool:
    """Whether the evaluator config ``node`` is ``evaluator=none`` (whichever module path its ``_target_`` names)."""
    return issubclass(get_class(node._target_), NoneEvaluator)


def make_evaluator(node: DictConfig) -> BaseEvaluator:
    """The evaluator of ``node``, without the probability-flow ODE scores' keys that every evaluator config holds.
    ``evaluator=none`` drops every other key too: a preset's scoring settings (``experiment=mnist`` sets
    ``evaluator.num_samples``) have nothing to configure when nothing is scored."""
    if scores_nothing(node):
        return NoneEvaluator()
    own = copy.deepcopy(node)
    with open_dict(own):
        for key in ODE_SCORE_KEYS:
            own.pop(key, None)
    return instantiate(own, _convert_="all")


def build_network(cfg: DictConfig, job: HydraRun, features: bool = False) -> tuple[BaseData, DictConfig, nn.Module]:
    """The data set, the config with what it implies (:func:`data_implied`) and the network built from it; under
    ``torch.device("meta")`` the network takes no memory (``task=summary`` counts a paper-sized one so).
    ``features``: latents load the REPA encoder features stored with them."""
    checked(cfg.data, "data")
    data = build_data(cfg, features)  # latents: with the images they encode
    check_compatible(data, get_class(cfg.model._target_), job.choices.get("data") or cfg.data._target_,
                     job.choices.get("model") or cfg.model._target_)
    cfg = method_implied(data_implied(autoencoder_implied(cfg, data), data, job.keys), job.keys)
    return data, cfg, instantiate(checked(cfg.model, "model"), _convert_="all")

def checked(node: DictConfig, group: str) -> DictConfig:
    """``node``, after checking that its ``_target_`` takes every key it sets: a key left by a preset written for
    another option (``experiment=mnist_dit model=edm2_unet`` keeps ``model.patch_size``) is one line, not a
    TypeError inside Hydra.

    Raises:
        ConfigError: naming ``<group>.<key>``.
    """
    parameters = inspect.signature(get_class(node._target_)).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return node
    names = {p.name for p in parameters}
    for key in node:
        if not str(key).startswith("_") and key not in names:
            raise ConfigError(f"{group}.{key} is not an argument of {node._target_}: drop it with ~{group}.{key} "
                              f"(a preset such as experiment=... may set it for its own {group})")
    return node


def _instantiate_partial(node: DictConfig, **arguments: Any) -> Any:
    return instantiate(node, _convert_="all")(**arguments)


class SamplerFactory:
    """The configured sampler (``sampler`` of ``command``) for a network; with ``sampler.guide`` its autoguidance
    guide is loaded too (a checkpoint name such as ``epoch_0010`` is looked up in ``run_dir``); ``decoder``: a latent
    run's, through which samples become images."""

    def __init__(self, command: DictConfig, method: BaseMethod, sample_shape: tuple[int, ...],
                 decoder: Decoder | None = None) -> None:
        self.sampler = command.sampler
        self.method, self.sample_shape = method, sample_shape
        self.decoding = {} if decoder is None else {"decoder": decoder}  # pixel runs: the sampler as before

    def __call__(self, model: nn.Module, run_dir: Path | None = None, dist: DistributedContext | None = None,
                 **overrides: Any) -> Sampler:
        guide = self.sampler.get("guide")
        guide_model = None if guide is None else load_guide_model(str(guide), run_dir, self.method.prediction)
        if guide_model is not None:
            try:
                self.method.check_network(guide_model)  # e.g. a MeanFlow run's guide must embed two times too
            except ConfigError as error:
                raise ConfigError(f"sampler.guide={guide}: {error}") from None
        return instantiate(self.sampler, _convert_="all")(
            model=model, method=self.method, sample_shape=self.sample_shape, guide_model=guide_model,
            distributed=dist, **self.decoding, **overrides
        )


def data_implied(cfg: DictConfig, data: BaseData, command_line: set[str]) -> DictConfig:
    """A copy of ``cfg`` with what ``data`` implies for the network and method where ``cfg`` leaves it open (a key
    set on the command line stays as given); saved as the run's config, so a run directory describes itself."""
    cfg = copy.deepcopy(cfg)
    shape = data.sample_shape
    implied = {"in_channels": shape[0], "image_size": shape[-1]} if data.kind == "image" else {"dim": shape[0]}
    accepted = inspect.signature(get_class(cfg.model._target_)).parameters
    with open_dict(cfg):
        for name, value in implied.items():
            if name in accepted and cfg.model.get(name) is None:
                cfg.model[name] = value
            elif name in accepted and cfg.model[name] != value:
                raise ConfigError(f"model.{name}={cfg.model[name]} does not match the data's {value} "
                                  f"(data.sample_shape={list(shape)}); leave model.{name} unset to take the data's")
        if data.kind == "points" and "clip_denoised" in cfg.method and "method.clip_denoised" not in command_line:
            cfg.method.clip_denoised = False  # standardised points are not confined to [-1, 1]
    return cfg


def method_implied(cfg: DictConfig, command_line: set[str]) -> DictConfig:
    """``cfg`` with ``model.two_times=true`` for a method whose network takes a second time (MeanFlow), where the
    network accepts it and the command line leaves it open; ``method.check_network`` refuses the rest."""
    needs = getattr(get_class(cfg.method._target_), "two_times", False)
    accepted = inspect.signature(get_class(cfg.model._target_)).parameters
    if needs and "two_times" in accepted and "model.two_times" not in command_line:
        with open_dict(cfg):
            cfg.model.two_times = True
    return cfg


def check_compatible(data: BaseData, model_class: type, data_choice: str, model_choice: str) -> None:
    """An image network (one taking ``image_size``) needs image data and a point network (``dim``) point data;
    checked before the model is built.

    Raises:
        ConfigError: naming the ``model`` option to choose instead.
    """
    accepted = inspect.signature(model_class).parameters
    if data.kind == "points" and "image_size" in accepted:
        raise ConfigError(f"model={model_choice} needs image data but data={data_choice}; use model=mlp")
    if data.kind == "image" and "dim" in accepted:
        raise ConfigError(f"model={model_choice} takes 2-D points but data={data_choice}; use model=unet (or dit, "
                          f"uvit, edm2_unet)")


def make_distillation(cfg: DictConfig, student: nn.Module, method: BaseMethod, teacher: DistillRun) -> Any:
    """The distillation "method": the frozen teacher (the teacher run's best EMA weights) and the student's method;
    the student network starts as a copy of the teacher."""
    weights = checkpoint.ema_weights(load_checkpoint(teacher.teacher_checkpoint))
    teacher_model = instantiate(cfg.model, _convert_="all")
    teacher_model.load_state_dict(weights)
    student.load_state_dict(weights)
    return instantiate(cfg.distill, _convert_="all")(method=method, teacher=teacher_model,
                                                     teacher_step=teacher.teacher_step)


def make_alignment(settings: DictConfig, method: BaseMethod, model: nn.Module, data: BaseData) -> nn.Module:
    """The Trainer's "method" with REPA on (``method.repa.*``): the method's loss plus the alignment of ``model``'s
    tokens with the frozen encoder's patch features: of each image batch, or those stored with latents."""
    encoder = load_patch_encoder(settings.encoder, settings.encoder_path)
    shape = None if isinstance(data, LatentData) else data.sample_shape
    if isinstance(data, LatentData):
        check_stored_features(data, settings, encoder_identity(settings.encoder, encoder))
    return RepresentationAlignment(method, model, encoder, shape, weight=settings.weight, depth=settings.depth,
                                   projector_dim=settings.projector_dim, resize=settings.resize)


def check_stored_features(data: LatentData, settings: DictConfig, identity: dict[str, str]) -> None:
    """REPA on latents aligns with the features ``task=encode`` stored beside them (the images are not in the
    batch): they must exist and be those of the encoder ``method.repa.*`` names.

    Raises:
        ConfigError: naming ``encode.features`` (none stored) or ``method.repa.encoder`` (another encoder's).
    """
    stored = data.manifest.get("features")
    if stored is None:
        raise ConfigError(f"method.repa.weight={settings.weight} on latents aligns with encoder features stored with "
                          f"them, and data.path={data.path} has none: encode again into it with "
                          f"encode.features={settings.encoder} (the latents are kept)")
    if {key: stored[key] for key in identity} != identity:
        raise ConfigError(f"method.repa.encoder={settings.encoder} (weights sha256 {identity['weights_sha256'][:12]}"
                          f"...): the features stored in data.path={data.path} are encode.features={stored['encoder']}"
                          f"'s (weights sha256 {stored['weights_sha256'][:12]}...); set method.repa.encoder (and "
                          "encoder_path) to theirs, or encode the latents with this encoder")


def open_run_logger(cfg: DictConfig, job: HydraRun, run_dir: Path, run_id: str | None) -> BaseLogger:
    """The configured logger, told the run's name (from the overrides), its sweep group, its config and, when
    resuming, the logger run id kept in the checkpoint (so W&B continues the same run)."""
    return open_logger(
        instantiate(cfg.logger),
        run_dir=run_dir,
        name=run_name_from_overrides(list(job.overrides)),
        group=None if job.sweep_dir is None else sweep_group(job.sweep_dir),
        config=OmegaConf.to_container(cfg, resolve=True),
        run_id=run_id,
    )

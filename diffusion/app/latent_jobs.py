"""``task=train_autoencoder`` and ``task=encode``: the two jobs that make a latent space and fill it.

Like every job here they read their config, build what they need and hand plain objects to :mod:`diffusion.tasks`.
"""

from __future__ import annotations

import copy
from functools import partial
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from diffusion.app.build import NO_EVALUATOR, _instantiate_partial, make_evaluator, open_run_logger
from diffusion.app.hydra_run import HydraRun
from diffusion.app.latent_config import build_data, chosen_autoencoder
from diffusion.app.run_files import print_config_tree, save_run_config
from diffusion.autoencoders import AutoencoderLoss, autoencoder_kl
from diffusion.data.base import BaseData
from diffusion.data.latents import LatentData
from diffusion.evaluation.patch_features import encoder_identity, load_patch_encoder
from diffusion.runtime.checks import ConfigError, check_bool
from diffusion.runtime.devices import resolve_device
from diffusion.runtime.distributed import DistributedContext
from diffusion.runtime.seeding import seed_everything
from diffusion.tasks import encode, train_autoencoder
from diffusion.tasks.components import RunSettings
from diffusion.tasks.run_files import remove_if_empty
from diffusion.training.repa import check_encoder_input


def run_train_autoencoder(cfg: DictConfig, job: HydraRun) -> float:
    """``task=train_autoencoder autoencoder=own data=<image data>``: train ``autoencoder.network`` with
    ``autoencoder.kl_weight`` under this command's trainer, then score its reconstructions."""
    node = chosen_autoencoder(cfg)
    if node is None or node.get("name") != "own":
        raise ConfigError("task=train_autoencoder trains autoencoder=own (got autoencoder="
                          f"{cfg.autoencoder.get('name')}); add autoencoder=own")
    if node.get("run_dir") is not None:
        raise ConfigError(f"autoencoder.run_dir={node.run_dir} names a trained autoencoder; task=train_autoencoder "
                          "trains a new one: leave autoencoder.run_dir unset")
    resolve_device(cfg.trainer.device)
    check_bool(cfg.trainer.progress, "trainer.progress")
    dist = DistributedContext.from_environment(cfg.trainer.device)
    seed_everything(cfg.seed + dist.rank)
    data = image_data(cfg)
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):  # the network's input, recorded so that autoencoder=own rebuilds it from the run
        cfg.autoencoder.network.in_channels = data.sample_shape[0]
        cfg.autoencoder.network.image_size = data.sample_shape[-1]
    config = OmegaConf.to_container(cfg, resolve=True)
    parts = train_autoencoder.AutoencoderParts(
        data, autoencoder_kl(**OmegaConf.to_container(cfg.autoencoder.network, resolve=True)),  # type: ignore[arg-type]
        AutoencoderLoss(cfg.autoencoder.kl_weight), make_evaluator(cfg.get("evaluator", NO_EVALUATOR)),
        make_trainer=partial(_instantiate_partial, cfg.trainer),
        make_file_manager=lambda run_dir: instantiate(cfg.checkpoint)(run_dir=run_dir),
        make_logger=partial(open_run_logger, cfg, job),
    )
    settings = RunSettings(
        output_dir=job.output_dir, seed=cfg.seed, resume=cfg.resume, max_steps=cfg.trainer.max_steps,
        config=config,  # type: ignore[arg-type]
        save_config=lambda run_dir: save_run_config(config, run_dir, job.overrides),  # type: ignore[arg-type]
        print_config=lambda: print_config_tree(config),  # type: ignore[arg-type]
    )
    return train_autoencoder.train_autoencoder(parts, settings, dist)


def run_encode(cfg: DictConfig, job: HydraRun) -> None:
    """``task=encode data=<image data> autoencoder=<sd_vae|own>``: the data's splits as latent shards in this run's
    directory (``resume=<that folder>`` or the same ``hydra.run.dir`` continues an interrupted encode)."""
    seed_everything(cfg.seed)
    if chosen_autoencoder(cfg) is None:
        raise ConfigError("task=encode needs an autoencoder: autoencoder=sd_vae autoencoder.weights=<folder> or "
                          "autoencoder=own autoencoder.run_dir=<a task=train_autoencoder run>")
    data = image_data(cfg)
    device = resolve_device(cfg.encode.device, "encode.device")
    autoencoder = instantiate(cfg.autoencoder, _convert_="all").to(device)
    run_dir = job.output_dir if cfg.resume in (None, "auto") else Path(str(cfg.resume)).expanduser()
    if run_dir != job.output_dir and not (run_dir / "latents.json").is_file():
        raise ConfigError(f"resume={cfg.resume}: no latents.json there to continue; leave resume unset to encode "
                          "into a new run directory")
    settings = encode.EncodeSettings(run_dir, cfg.encode.batch_size, cfg.encode.shard_size,
                                     check_bool(cfg.trainer.progress, "trainer.progress"),
                                     feature_encoder(cfg, data.sample_shape, device))
    encode.encode(autoencoder, data, OmegaConf.to_container(cfg.autoencoder, resolve=True),  # type: ignore[arg-type]
                  OmegaConf.to_container(cfg.data, resolve=True), settings)  # type: ignore[arg-type]
    if run_dir != job.output_dir:
        remove_if_empty(job.output_dir)  # Hydra made it; the latents live in the folder continued


def feature_encoder(cfg: DictConfig, image_shape: tuple[int, ...],
                    device: torch.device) -> encode.FeatureEncoder | None:
    """``encode.features=<encoder>``: the REPA encoder whose features are stored beside the latents, with the
    weights (``method.repa.encoder_path``) and ``method.repa.resize`` a REPA run would use; None when unset.

    Raises:
        ConfigError: naming ``encode.features`` or the ``method.repa.*`` key that does not fit the images.
    """
    name = cfg.encode.get("features")
    if name is None:
        return None
    settings = cfg.method.get("repa") or {}  # a method config without REPA's keys: their defaults
    encoder = load_patch_encoder(name, settings.get("encoder_path"), key="encode.features")
    resize = check_encoder_input(encoder, image_shape, check_bool(settings.get("resize", False), "method.repa.resize"),
                                 key="encode.features")
    return encode.FeatureEncoder(encoder.to(device), encoder_identity(name, encoder), resize)


def image_data(cfg: DictConfig) -> BaseData:
    """The image data an autoencoder trains on or encodes (not latents, not points).

    Raises:
        ConfigError: naming ``data`` otherwise.
    """
    data = build_data(cfg)
    if isinstance(data, LatentData) or data.kind != "image":
        kind = "latents" if isinstance(data, LatentData) else data.kind
        raise ConfigError(f"task={cfg.task} needs image data (data=mnist, digits, cifar10, image_folder, ...), got "
                          f"{kind} of shape {list(data.sample_shape)}")
    return data

"""What a latent run's config implies: its data (latents, with the images they encode for the evaluators), the
autoencoder that made them (recorded in the run's config, so the run names what it needs) and its decoder.

``autoencoder=none`` (a node without ``_target_``) is pixel space: nothing here changes such a run.
"""

from __future__ import annotations

import copy
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from diffusion.autoencoders.kl import LatentAutoencoder, LatentDecoder
from diffusion.data.base import BaseData
from diffusion.data.latents import MANIFEST, LatentData, read_manifest
from diffusion.runtime.checks import ConfigError
from diffusion.storage.safe_load import check_safe_targets

LATENT_DATA = f"{LatentData.__module__}.{LatentData.__name__}"
PIXEL_SPACE = {"name": "none"}
SOURCE_KEYS = ("_target_", "name", "weights", "weights_sha256", "scale", "run_dir")  # which weights, how scaled


def chosen_autoencoder(cfg: DictConfig) -> DictConfig | None:
    """The config's autoencoder node, or None for pixel space (``autoencoder=none`` or an older run's config)."""
    node = cfg.get("autoencoder")
    return node if node is not None and node.get("_target_") is not None else None


def build_data(cfg: DictConfig, features: bool = False) -> BaseData:
    """``cfg.data`` instantiated; latents get the image data they encode (its config is in their
    ``latents.json``), which the evaluators score against, and with ``features`` (a REPA run) load the encoder
    features stored with them.

    Raises:
        ConfigError: naming ``data.path`` when it is unset or holds no latents.
    """
    if cfg.data.get("_target_") != LATENT_DATA:
        return instantiate(cfg.data, _convert_="all")
    path = cfg.data.get("path")
    manifest = read_manifest(path)
    check_safe_targets(manifest["data"], f"{path}/{MANIFEST}")
    pixels = instantiate(OmegaConf.create(manifest["data"]), _convert_="all")
    return instantiate(cfg.data, pixels=pixels, features=features, _convert_="all")


def autoencoder_implied(cfg: DictConfig, data: BaseData) -> DictConfig:
    """``cfg`` whose ``autoencoder`` is the one that made ``data``'s latents (saved with the run, so sampling it
    decodes with the same one); pixel data with an autoencoder chosen is refused.

    Raises:
        ConfigError: naming ``autoencoder`` when it is not the latents' own, or is set for pixel data.
    """
    chosen = chosen_autoencoder(cfg)
    if not isinstance(data, LatentData):
        if chosen is not None:
            raise ConfigError(f"autoencoder={chosen.get('name')} with image data: encode once with task=encode "
                              f"autoencoder={chosen.get('name')}, then train with data=latents data.path=<that run>")
        return cfg
    recorded = data.manifest["autoencoder_config"]
    if chosen is not None and _source(chosen) != _source(recorded):
        raise ConfigError(f"autoencoder={chosen.get('name')}: the latents in data.path={data.path} were made by "
                          f"autoencoder={recorded.get('name')} ({_where(recorded)}); leave autoencoder unset to "
                          "use theirs")
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.autoencoder = recorded
    return cfg


def check_command_autoencoder(run_cfg: DictConfig, command: DictConfig, command_line: set[str]) -> None:
    """Sampling an earlier run: an autoencoder on this command line must be the run's own.

    Raises:
        ConfigError: naming ``autoencoder`` and the one the run was trained with.
    """
    if not any(key.split(".")[0] == "autoencoder" for key in command_line):
        return
    own = run_cfg.get("autoencoder") or PIXEL_SPACE
    if _source(command.autoencoder) != _source(own):
        raise ConfigError(f"autoencoder={command.autoencoder.get('name')}: run_dir was trained with autoencoder="
                          f"{own.get('name')} ({_where(own)}); leave autoencoder unset to decode with its own")


def latent_decoder(cfg: DictConfig, data: BaseData) -> LatentDecoder | None:
    """The decoder a latent run's sampler hands its samples through: the recorded autoencoder, checked to be the
    one whose weights made the latents, at the latents' scale and shift.

    Raises:
        ConfigError: naming the autoencoder's weights when their digest differs from the latents' record.
    """
    if not isinstance(data, LatentData):
        return None
    autoencoder: LatentAutoencoder = instantiate(cfg.autoencoder, _convert_="all")
    made_by = data.manifest["autoencoder"]["weights_sha256"]
    if autoencoder.digest != made_by:
        raise ConfigError(f"autoencoder ({_where(cfg.autoencoder)}): its weights (sha256 {autoencoder.digest[:12]}...) "
                          f"are not those that made the latents in data.path={data.path} ({made_by[:12]}...)")
    return LatentDecoder(autoencoder.scaled(data.scale, data.shift), data.manifest["image_shape"])


def _source(node: Any) -> dict[str, Any]:
    """The keys that decide an autoencoder's weights and scale (a recorded ``network`` is what it was trained as)."""
    node = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    return {key: node.get(key) for key in SOURCE_KEYS}


def _where(node: Any) -> str:
    """Where an autoencoder's weights come from, for a message: its weights folder or its training run."""
    node = node or {}
    return f"weights={node.get('weights')}" if node.get("weights") else f"run_dir={node.get('run_dir')}"

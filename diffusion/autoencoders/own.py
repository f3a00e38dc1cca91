"""``autoencoder=own``: the ``AutoencoderKL`` a ``task=train_autoencoder`` run trained here, read from its best
checkpoint (EMA weights) and the network settings recorded in it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffusion.autoencoders.kl import LatentAutoencoder, autoencoder_kl, state_digest
from diffusion.runtime.checks import ConfigError
from diffusion.storage import checkpoint
from diffusion.storage.checkpoint import CheckpointError
from diffusion.storage.file_manager import FileManager


def load_own(run_dir: str | None = None, network: dict[str, Any] | None = None, kl_weight: float | None = None,
             name: str = "own") -> LatentAutoencoder:
    """The best EMA weights of the ``task=train_autoencoder`` run ``run_dir``, built with the network settings that
    run recorded (``network`` and ``kl_weight`` here are what a new training run would use; they are not read).
    Its latent scale is measured at encode time (1 / std), as this network defines none of its own.

    Raises:
        ConfigError: naming ``autoencoder.run_dir`` when it is unset, holds no checkpoint or is not such a run.
    """
    if run_dir is None:
        raise ConfigError("autoencoder=own needs autoencoder.run_dir=<a task=train_autoencoder run>")
    try:
        state = FileManager(Path(str(run_dir)).expanduser()).load("best")
    except CheckpointError as error:
        raise ConfigError(f"autoencoder.run_dir={run_dir}: {error}") from None
    recorded = (state.get("config") or {}).get("autoencoder") or {}
    if recorded.get("name") != "own" or "in_channels" not in (recorded.get("network") or {}):
        raise ConfigError(f"autoencoder.run_dir={run_dir} is not a task=train_autoencoder run")
    settings = dict(recorded["network"])
    model = autoencoder_kl(**settings)
    weights = checkpoint.ema_weights(state)
    model.load_state_dict(weights)
    identity = {"name": name, "config": settings, "weights_sha256": state_digest(weights)}
    return LatentAutoencoder(model, identity)

"""KL autoencoders (Rombach et al. 2022, Sec. 3 and App. G): diffusers' ``AutoencoderKL`` behind one small interface.

An image x in [-1, 1] is encoded into the posterior q(z | x) = N(mean, std^2) (a diagonal Gaussian); a diffusion
model trains on z' = (z - shift) * scale, so that z' has roughly unit variance (the latent diffusion paper's
rule: scale = 1 / std of the encoded training set), and its samples are decoded by x = D(z' / scale + shift).
Notation: ``scale`` = diffusers' ``scaling_factor``, ``shift`` = its ``shift_factor`` (0 where it defines none).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from torch import nn

from diffusion.runtime.checks import ConfigError, check_choice, check_int

ScaleSource = Literal["config", "measure"]
SCALE_SOURCES = ("config", "measure")
WEIGHTS_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


class Posterior(NamedTuple):
    """q(z | x): the mean and standard deviation of each latent, ``(B, C, h, w)`` each."""

    mean: torch.Tensor
    std: torch.Tensor


class LatentAutoencoder:
    """A frozen ``AutoencoderKL`` with its latent scale and shift, and its identity (what made its weights).

    ``identity`` = ``{"name", "config", "weights_sha256"}``: latents and runs record it, and refuse an autoencoder
    whose identity differs. ``scale=None`` means "measure it from the encoded training set" (``task=encode``).
    """

    def __init__(self, network: nn.Module, identity: dict[str, Any], scale: float | None = None,
                 shift: float = 0.0) -> None:
        self.network = network.eval().requires_grad_(False)
        self.identity, self.scale, self.shift = identity, scale, float(shift)

    @property
    def digest(self) -> str:
        return str(self.identity["weights_sha256"])

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def to(self, device: torch.device | str) -> LatentAutoencoder:
        self.network.to(device)
        return self

    def scaled(self, scale: float, shift: float = 0.0) -> LatentAutoencoder:
        """The same network at a measured latent scale and shift (those stored with its latents)."""
        return LatentAutoencoder(self.network, self.identity, scale, shift)

    def latent_shape(self, image_shape: Sequence[int]) -> tuple[int, ...]:
        """The latent shape ``(C, h, w)`` of an image of ``image_shape`` ``(C, H, W)``, by one encoding of zeros."""
        with torch.inference_mode():
            zeros = torch.zeros(1, *image_shape, device=self.device)
            return tuple(self.encode(zeros).mean.shape[1:])

    @torch.inference_mode()
    def encode(self, x: torch.Tensor) -> Posterior:
        """q(z | x) of images ``x`` ``(B, C, H, W)`` in [-1, 1], unscaled (as the network gives it)."""
        posterior = self.network.encode(x.to(self.device)).latent_dist
        return Posterior(posterior.mean.float(), posterior.std.float())

    @torch.inference_mode()
    def decode(self, z: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Images in [-1, 1] ``(B, C, H, W)`` of scaled latents ``z`` ``(B, c, h, w)`` (a diffusion model's
        samples), decoded ``batch_size`` at a time: x = D(z / scale + shift)."""
        assert self.scale is not None, "decode needs the latent scale (measured by task=encode)"
        out = [self.network.decode(chunk.to(self.device) / self.scale + self.shift).sample.clamp(-1, 1)
               for chunk in z.split(batch_size)]
        return torch.cat(out).to(z.device) if out else z


class LatentDecoder:
    """What a sampler needs to turn latents into images: the autoencoder with the run's scale, the image shape."""

    def __init__(self, autoencoder: LatentAutoencoder, image_shape: Sequence[int], batch_size: int = 64) -> None:
        self.autoencoder, self.image_shape, self.batch_size = autoencoder, tuple(image_shape), batch_size

    def to(self, device: torch.device | str) -> LatentDecoder:
        self.autoencoder.to(device)
        return self

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(z, self.batch_size)


def autoencoder_kl(in_channels: int, image_size: int, down_channels: Sequence[int] = (32, 64, 64),
                   latent_channels: int = 4, layers_per_block: int = 1, norm_groups: int = 16) -> nn.Module:
    """A fresh ``AutoencoderKL`` (diffusers) for ``task=train_autoencoder``: one encoder block per entry of
    ``down_channels``, each after the first halving the side (f = 2^(len - 1)).

    Raises:
        ConfigError: naming ``autoencoder.network.*`` for sizes the network cannot take.
    """
    from diffusers import AutoencoderKL

    channels = [check_int(c, "autoencoder.network.down_channels", minimum=1) for c in down_channels]
    groups = check_int(norm_groups, "autoencoder.network.norm_groups", minimum=1)
    if not channels or any(c % groups for c in channels):
        raise ConfigError(f"autoencoder.network.down_channels={list(down_channels)} must be a non-empty list of "
                          f"multiples of autoencoder.network.norm_groups={groups}")
    return AutoencoderKL(
        in_channels=in_channels, out_channels=in_channels, block_out_channels=tuple(channels),
        down_block_types=("DownEncoderBlock2D",) * len(channels), up_block_types=("UpDecoderBlock2D",) * len(channels),
        layers_per_block=check_int(layers_per_block, "autoencoder.network.layers_per_block", minimum=1),
        latent_channels=check_int(latent_channels, "autoencoder.network.latent_channels", minimum=1),
        norm_num_groups=groups, sample_size=image_size,
    )


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 of a state dict's names and tensor bytes in name order: one weights' identity, whatever file holds
    them."""
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_pretrained(weights: str, weights_sha256: str | None = None, scale: ScaleSource = "config",
                    name: str = "sd_vae") -> LatentAutoencoder:
    """``autoencoder=sd_vae``: an ``AutoencoderKL`` saved by diffusers (``save_pretrained``; e.g. the
    stabilityai/sd-vae-ft-ema folder) read from the folder ``weights`` with ``local_files_only`` (never a download),
    its weights file's sha256 checked against ``weights_sha256`` (null: recorded, not checked); ``scale="config"``
    takes scaling_factor and shift_factor from its config.json, ``"measure"`` measures the scale at encode time.

    Raises:
        ConfigError: naming ``autoencoder.weights`` (no such folder, no weights file) or
            ``autoencoder.weights_sha256`` (a different file).
    """
    from diffusers import AutoencoderKL

    check_choice(scale, "autoencoder.scale", SCALE_SOURCES)
    folder = Path(str(weights)).expanduser()
    files = [folder / name for name in WEIGHTS_FILES if (folder / name).is_file()]
    if not (folder / "config.json").is_file() or not files:
        raise ConfigError(f"autoencoder.weights={weights}: no diffusers AutoencoderKL there (config.json and "
                          f"{WEIGHTS_FILES[0]}); see docs/latents.md for how to get the weights")
    with open(files[0], "rb") as file:
        actual = hashlib.file_digest(file, "sha256").hexdigest()
    expected = None if weights_sha256 is None else str(weights_sha256).strip().lower()
    if expected is not None and not actual.startswith(expected):
        raise ConfigError(f"autoencoder.weights_sha256={expected}: {files[0]} has sha256 {actual} (a corrupt or "
                          "different file: fetch it again, or set autoencoder.weights_sha256 to its digest)")
    network = AutoencoderKL.from_pretrained(folder, local_files_only=True)
    config = json.loads((folder / "config.json").read_text())
    identity = {"name": name, "config": _architecture(config), "weights_sha256": actual}
    if scale == "measure":
        return LatentAutoencoder(network, identity)
    shift = config.get("shift_factor")
    return LatentAutoencoder(network, identity, float(config.get("scaling_factor", 1.0)), shift or 0.0)


def _architecture(config: dict[str, Any]) -> dict[str, Any]:
    """The network's config without diffusers' bookkeeping (``_class_name``, versions, paths)."""
    return {key: value for key, value in sorted(config.items()) if not key.startswith("_")}


def measured_scale(mean_sum: float, square_sum: float, variance_sum: float, count: int) -> float:
    """1 / std of z ~ q(z | x) over the encoded training set (Rombach et al. 2022, Sec. 4.3.2 and App. G), from
    sums over every latent entry: Var z = E[std^2] + Var(mean)."""
    mean = mean_sum / count
    variance = variance_sum / count + square_sum / count - mean**2
    return 1.0 / math.sqrt(max(variance, 1e-12))  # a collapsed latent space would otherwise divide by zero

"""Latents of an image data set, encoded once by ``task=encode``: the file format (written here, read here) and
``data=latents``, which trains on them.

A latents folder (the encode run's directory) holds ``latents.json`` (the autoencoder's identity and the config
that rebuilds it, the image data's config, shapes, counts, the latent scale and shift) and shards
``<split>_<first index>.npz`` with ``.sha256`` sidecars: the posterior's ``mean`` and ``std`` per image
``(n, c, h, w)``, the same for its horizontal flip (``flip_mean``, ``flip_std``) where the data flips, and
``labels``. Training draws z = mean + std * eps afresh every step and feeds z' = (z - shift) * scale.

With ``encode.features=<encoder>``, ``latents.json`` also records ``features`` (the REPA encoder's name, weights
sha256, resize, map shape) and each training shard has a checksummed ``<split>_<first index>_features.npz`` beside
it: that encoder's patch features ``(n, D, h, w)`` of each clean image (``features``) and of its flip
(``flip_features``), float16. Validation computes the method's loss alone, so only the training split has them.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffusion.data.base import BaseData, DataSplits
from diffusion.runtime.checks import ConfigError
from diffusion.storage.atomic import atomic_write, atomic_write_text, written_intact

FORMAT = "diffusion-latents/1"
MANIFEST = "latents.json"
SPLITS = ("train", "val")
FEATURES = "_features"  # the suffix of a shard's features file


def read_manifest(path: str | Path | None, key: str = "data.path") -> dict[str, Any]:
    """The ``latents.json`` of the latents folder ``path``.

    Raises:
        ConfigError: naming ``key`` when ``path`` is unset or holds no latents, or the file when it is not ours.
    """
    if path is None or str(path) in ("", "???"):
        raise ConfigError(f"data=latents needs {key}=<the run directory of a task=encode run>")
    file = Path(str(path)).expanduser() / MANIFEST
    if not file.is_file():
        raise ConfigError(f"{key}={path}: no {MANIFEST} there; encode first: python run.py task=encode "
                          "data=<image data> autoencoder=<sd_vae|own>")
    try:
        manifest = json.loads(file.read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"{file} is damaged ({type(error).__name__}); encode again into a new folder") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ConfigError(f"{file} is not a latents file of this project (format {FORMAT})")
    return manifest


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    atomic_write_text(directory / MANIFEST, json.dumps({"format": FORMAT, **manifest}, indent=2, sort_keys=True))


def shard_path(directory: Path, split: str, start: int, suffix: str = "") -> Path:
    """The latent shard of ``split`` from row ``start``; ``suffix=FEATURES``: the encoder features beside it."""
    return directory / f"{split}_{start:08d}{suffix}.npz"


def shard_starts(count: int, shard_size: int) -> range:
    return range(0, count, shard_size)


def shard_intact(path: Path) -> bool:
    """``path`` and its sidecar exist with equal digests (False: not written yet); a damaged shard is one line."""
    return written_intact(path, f"delete it and run task=encode again into {path.parent} to encode it anew")


def write_shard(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """One shard, atomically, with its sha256 sidecar (a kill leaves it whole or absent)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write(buffer.getvalue(), path)


def read_split(directory: Path, split: str, count: int, shard_size: int, suffix: str = "") -> dict[str, torch.Tensor]:
    """Every shard of ``split`` (``suffix=FEATURES``: their features), verified, concatenated in index order.

    Raises:
        ConfigError: naming a shard that is missing or damaged.
    """
    parts: list[dict[str, np.ndarray]] = []
    for start in shard_starts(count, shard_size):
        path = shard_path(directory, split, start, suffix)
        if not shard_intact(path):
            raise ConfigError(f"{path} is missing; run task=encode again into {directory} to finish the encoding")
        with np.load(path, allow_pickle=False) as shard:
            parts.append({name: shard[name] for name in shard.files})
    return {name: torch.from_numpy(np.concatenate([part[name] for part in parts])) for name in parts[0]}


class LatentData(BaseData):
    """``data=latents data.path=<encoded folder>``: the latents of an image data set as training data.

    A training row packs ``[mean, std]`` (and ``[flip_mean, flip_std]``) along dim 1, ``(N, 2 or 4, c, h, w)``;
    a validation row is the mean ``(N, c, h, w)``. :meth:`prepare_batch` draws z' = ((mean + std * eps) - shift)
    * scale with a flip chosen per image, both from the batch's seeded generator (a resumed run redraws them).
    ``pixels``: the image data they encode, what evaluators score against (:attr:`scored_data`); ``features``: also
    load the stored encoder features, which :meth:`loss_inputs` gives REPA (the build checks their encoder first).

    Raises:
        ConfigError: naming ``data.path`` (unset, not a latents folder, an unfinished encode) or a shard.
    """

    kind = "image"

    def __init__(self, path: str | None = None, pixels: BaseData | None = None, features: bool = False) -> None:
        super().__init__()
        self.manifest = read_manifest(path)
        self.path = Path(str(path)).expanduser()
        if self.manifest.get("scale") is None:
            raise ConfigError(f"data.path={path}: the encoding did not finish; run the same task=encode again "
                              f"into {path} to continue it")
        self.pixels = pixels
        self.scale, self.shift = float(self.manifest["scale"]), float(self.manifest["shift"])
        self.features = features and self.manifest.get("features") is not None
        self._features: torch.Tensor | None = None  # (N, 1 or 2, D, h, w) float16, on the CPU

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["latent_shape"])

    @property
    def num_classes(self) -> int:
        return int(self.manifest.get("num_classes", 0))

    @property
    def random_batches(self) -> bool:
        return True  # z ~ q(z | x) (and the view) are drawn per batch from the trainer's seed

    @property
    def scored_data(self) -> BaseData:
        return self if self.pixels is None else self.pixels

    def _load(self) -> DataSplits:
        split = {name: read_split(self.path, name, self.manifest["counts"][name], self.manifest["shard_size"])
                 for name in SPLITS}
        fields = ("mean", "std", "flip_mean", "flip_std") if self.manifest["flips"] else ("mean", "std")
        train = torch.stack([split["train"][name].float() for name in fields], dim=1)  # (N, 2 or 4, c, h, w)
        val = split["val"]["mean"].float()  # (N, c, h, w): validation and likelihoods see the posterior mean
        if self.features:
            stored = read_split(self.path, "train", self.manifest["counts"]["train"], self.manifest["shard_size"],
                                FEATURES)
            views = ("features", "flip_features") if self.manifest["flips"] else ("features",)
            self._features = torch.stack([stored[name] for name in views], dim=1)
        return DataSplits(train, val, split["train"].get("labels"), split["val"].get("labels"))

    def prepare_batch(self, x: torch.Tensor, generator_seed: int | None = None) -> torch.Tensor:
        if x.dim() == 4:
            z = x  # validation rows: the posterior mean
        elif generator_seed is None:
            z = x[:, 0]
        else:
            generator = torch.Generator().manual_seed(generator_seed)
            rows = torch.arange(len(x), device=x.device)
            pair = drawn_views(generator, len(x), x.shape[1] == 4).to(x.device)
            mean, std = x[rows, 2 * pair], x[rows, 2 * pair + 1]  # (B, c, h, w)
            z = mean + std * torch.randn(mean.shape, generator=generator).to(x.device)
        return (z - self.shift) * self.scale

    def loss_inputs(self, index: torch.Tensor, generator_seed: int | None = None) -> dict[str, torch.Tensor]:
        """``encoder_features`` ``(B, D, h, w)`` of the training rows ``index`` where loaded: of the same view (image
        or flip) that :meth:`prepare_batch` drew from ``generator_seed`` for these rows."""
        if not self.features or generator_seed is None:
            return {}
        self.load()
        assert self._features is not None
        stored = self._features[index.cpu()]  # (B, 1 or 2, D, h, w)
        view = drawn_views(torch.Generator().manual_seed(generator_seed), len(stored), stored.shape[1] == 2)
        return {"encoder_features": stored[torch.arange(len(stored)), view].float().to(index.device)}


def drawn_views(generator: torch.Generator, count: int, flips: bool) -> torch.Tensor:
    """Which view each of ``count`` rows trains on, ``(count,)`` long: 1 (the flipped image) with probability 1/2
    where flips are stored, else 0. The generator's first draw, so latents and their features agree."""
    if not flips:
        return torch.zeros(count, dtype=torch.long)
    return (torch.rand(count, generator=generator) < 0.5).long()

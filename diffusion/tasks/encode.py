"""``task=encode``: an image data set's train and validation splits encoded once into latent shards in the run
directory (the folder ``data=latents data.path=`` then names), so training runs no autoencoder at all.

Each shard holds the posterior's mean and std per image (and per horizontal flip where the data flips) and the
labels, written atomically with a sha256 sidecar (:mod:`diffusion.data.latents` owns the format). An interrupted
encode, run again into the same folder, keeps the intact shards and continues at the first missing one; the
latent scale is measured last where the autoencoder defines none (1 / std, Rombach et al. 2022, Sec. 4.3.2).

With ``encode.features=<encoder>`` each training shard also gets the REPA encoder's patch features of its clean
images (and flips) in a checksummed file beside it, so a REPA run on the latents runs no encoder; an encoded folder
without features gains them when encoded again with the option (its latent shards are kept).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from diffusion.autoencoders.kl import LatentAutoencoder, measured_scale
from diffusion.data.base import BaseData
from diffusion.data.latents import (
    FEATURES,
    MANIFEST,
    SPLITS,
    read_manifest,
    shard_intact,
    shard_path,
    shard_starts,
    write_manifest,
    write_shard,
)
from diffusion.runtime.checks import ConfigError, check_int
from diffusion.storage.atomic import remove_stale_temporaries
from diffusion.tasks.exits import holding_run
from diffusion.training.repa import encoder_features

SETTLED = ("scale", "shift", "format")  # written when the encoding finishes: not part of what must match


@dataclass
class FeatureEncoder:
    """``encode.features``: the REPA encoder whose patch features of each clean image are stored beside its latents,
    its identity (``encoder`` name and ``weights_sha256``) and whether images are resized to its input first."""

    encoder: nn.Module
    identity: dict[str, str]
    resize: bool = False

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """The features ``(B, D, h, w)`` of images ``(B, C, H, W)`` in [-1, 1], float16 on the CPU (a cosine
        target: half precision loses nothing that matters, and halves the files)."""
        device = next(self.encoder.parameters()).device
        return encoder_features(self.encoder, images.to(device), self.resize).cpu().half()

    def record(self, image_shape: tuple[int, ...]) -> dict[str, Any]:
        """What ``latents.json`` records of them: the identity, ``resize`` and the map's shape ``[D, h, w]``."""
        return {**self.identity, "resize": self.resize, "shape": list(self(torch.zeros(1, *image_shape)).shape[1:])}


@dataclass
class EncodeSettings:
    """Where and how to encode: the run directory, images per forward pass, images per shard, a progress bar, and
    the encoder whose features are stored too (None: latents alone)."""

    run_dir: Path
    batch_size: int = 64
    shard_size: int = 1024
    progress: bool = True
    features: FeatureEncoder | None = None


def encode(autoencoder: LatentAutoencoder, data: BaseData, autoencoder_config: dict[str, Any],
           data_config: dict[str, Any], settings: EncodeSettings, log: Callable[[str], None] = print) -> Path:
    """Encode ``data``'s splits into ``settings.run_dir`` (continuing an interrupted encode there); returns it.

    Raises:
        ConfigError: for point data, bad ``encode.*`` sizes, or a folder holding another autoencoder's (or other
            settings') latents; checked before anything is written.
    """
    started = time.perf_counter()
    if data.kind != "image":
        raise ConfigError(f"task=encode needs image data, got {data.kind} data (data.sample_shape="
                          f"{list(data.sample_shape)})")
    batch_size = check_int(settings.batch_size, "encode.batch_size", minimum=1)
    shard_size = check_int(settings.shard_size, "encode.shard_size", minimum=1)
    splits = data.load()
    manifest = {
        "autoencoder": autoencoder.identity, "autoencoder_config": autoencoder_config, "data": data_config,
        "image_shape": list(data.sample_shape), "latent_shape": list(autoencoder.latent_shape(data.sample_shape)),
        "flips": bool(data.random_flip), "shard_size": shard_size, "num_classes": data.num_classes,
        "counts": {"train": len(splits.train), "val": len(splits.val)}, "scale": None, "shift": None,
        "features": None if settings.features is None else settings.features.record(tuple(data.sample_shape)),
    }
    manifest = json.loads(json.dumps(manifest))  # as it reads back from latents.json (tuples become lists)
    run_dir = settings.run_dir
    recorded = check_folder(run_dir, manifest)
    run_dir.mkdir(parents=True, exist_ok=True)
    with holding_run(run_dir, None, f"while encoding; the shards written in {run_dir} are kept: run the same "
                     "command to encode the rest"):
        remove_stale_temporaries(run_dir)  # a killed encode's half-written shard
        if not recorded or recorded.get("features") != manifest["features"]:  # new, or gaining features
            write_manifest(run_dir, {**manifest, "scale": recorded.get("scale"), "shift": recorded.get("shift")})
        total = sum(manifest["counts"].values())  # type: ignore[arg-type]
        shown = settings.progress and sys.stderr.isatty()
        with tqdm(total=total, unit="image", desc="encoding", disable=not shown, leave=False) as bar:
            for split in SPLITS:
                images, labels = (splits.train, splits.train_labels) if split == "train" else (splits.val,
                                                                                              splits.val_labels)
                encode_split(autoencoder, data, images, labels, run_dir, split, shard_size, batch_size, bar.update,
                             settings.features if split == "train" else None)
        scale, shift = autoencoder.scale, autoencoder.shift
        if scale is None:
            scale = measure_scale(run_dir, len(splits.train), shard_size)
        write_manifest(run_dir, {**manifest, "scale": scale, "shift": shift})
    log(summary({**manifest, "scale": scale}, time.perf_counter() - started, run_dir))
    return run_dir


def summary(manifest: dict[str, Any], seconds: float, run_dir: Path) -> str:
    """The line a finished encode prints: counts, flips, features, shapes, scale, seconds and the folder."""
    counts, features = manifest["counts"], manifest["features"]
    stored = "" if features is None else f", with {features['encoder']} features {tuple(features['shape'])}"
    return (f"encoded {counts['train'] + counts['val']} images ({counts['train']} train, {counts['val']} val"
            f"{', each also flipped' if manifest['flips'] else ''}{stored}) of shape {tuple(manifest['image_shape'])} "
            f"into latents of shape {tuple(manifest['latent_shape'])} (scale {manifest['scale']:.4g}) in "
            f"{seconds:.1f} s: {run_dir}")


def check_folder(run_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """A folder that already holds latents may only be continued with the same autoencoder and settings, and the
    same features (or gain them where it has none); returns what it records (empty: a new folder).

    Raises:
        ConfigError: naming the folder's ``latents.json`` and what differs (``encode.features`` for features).
    """
    if not (run_dir / MANIFEST).is_file():
        return {}
    recorded = read_manifest(run_dir, key="hydra.run.dir")
    if recorded.get("autoencoder") != manifest["autoencoder"]:
        made_by = recorded.get("autoencoder") or {}
        raise ConfigError(f"{run_dir / MANIFEST} holds latents of another autoencoder ({made_by.get('name')}, "
                          f"weights sha256 {str(made_by.get('weights_sha256'))[:12]}...); encode into a new folder "
                          "(hydra.run.dir=<new>)")
    differing = sorted(key for key in set(recorded) | set(manifest)
                       if key not in (*SETTLED, "features") and recorded.get(key) != manifest.get(key))
    if differing:
        raise ConfigError(f"{run_dir / MANIFEST} holds latents of other settings ({', '.join(differing)} differ); "
                          "encode into a new folder (hydra.run.dir=<new>) or with the same settings")
    held, asked = recorded.get("features"), manifest["features"]
    if held is not None and held != asked:
        raise ConfigError(f"{run_dir / MANIFEST} holds the features of encode.features={held['encoder']} (weights "
                          f"sha256 {held['weights_sha256'][:12]}..., resize={held['resize']}), not of encode.features="
                          f"{None if asked is None else asked['encoder']}: continue with those settings, or encode "
                          "into a new folder (hydra.run.dir=<new>)")
    return recorded


def encode_split(autoencoder: LatentAutoencoder, data: BaseData, images: torch.Tensor, labels: torch.Tensor | None,
                 run_dir: Path, split: str, shard_size: int, batch_size: int, advance: Callable[[int], Any],
                 features: FeatureEncoder | None = None) -> None:
    """Every missing shard of ``split`` (and features file, with ``features``): intact ones (a finished part of an
    interrupted encode) are kept."""
    for start in shard_starts(len(images), shard_size):
        rows = slice(start, start + shard_size)
        path = shard_path(run_dir, split, start)
        if not shard_intact(path):
            arrays = encode_images(autoencoder, data, images[rows], batch_size)
            if labels is not None:
                arrays["labels"] = labels[rows].numpy()
            write_shard(path, arrays)
        path = shard_path(run_dir, split, start, FEATURES)
        if features is not None and not shard_intact(path):
            write_shard(path, encode_features(features, data, images[rows], batch_size))
        advance(len(images[rows]))


def encode_images(autoencoder: LatentAutoencoder, data: BaseData, images: torch.Tensor,
                  batch_size: int) -> dict[str, np.ndarray]:
    """The posterior mean and std of each image ``(n, c, h, w)``, and of its mirror image where the data flips."""
    def posterior(view: torch.Tensor) -> dict[str, torch.Tensor]:
        encoded = autoencoder.encode(view)
        return {"mean": encoded.mean.float(), "std": encoded.std.float()}

    return per_view(data, images, batch_size, posterior)


def encode_features(features: FeatureEncoder, data: BaseData, images: torch.Tensor,
                    batch_size: int) -> dict[str, np.ndarray]:
    """The encoder's features of each image ``(n, D, h, w)``, and of its mirror image where the data flips: the
    views :func:`encode_images` encodes, so a latent and its features are of the same picture."""
    return per_view(data, images, batch_size, lambda view: {"features": features(view)})


def per_view(data: BaseData, images: torch.Tensor, batch_size: int,
             outputs: Callable[[torch.Tensor], dict[str, torch.Tensor]]) -> dict[str, np.ndarray]:
    """``outputs`` of every stored view of ``images`` (:func:`image_views`), each field concatenated over the batches
    under its view's prefix (``mean``, ``flip_mean``, ...)."""
    fields: dict[str, list[torch.Tensor]] = {}
    for views in image_views(data, images, batch_size):
        for prefix, view in views.items():
            for name, value in outputs(view).items():
                fields.setdefault(prefix + name, []).append(value.cpu())
    return {name: torch.cat(parts).numpy() for name, parts in fields.items()}


def image_views(data: BaseData, images: torch.Tensor, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    """``images`` in batches, as the views stored: ``""`` the image in [-1, 1], ``"flip_"`` its mirror image where
    the data flips."""
    for chunk in images.split(batch_size):
        x = data.prepare_batch(chunk).float()  # no seed: no random flip
        yield {"": x, "flip_": x.flip(-1)} if data.random_flip else {"": x}


def measure_scale(run_dir: Path, count: int, shard_size: int) -> float:
    """1 / std of z ~ q(z | x) over every latent entry of the encoded training split (read back, so an encode
    continued after a kill measures the same)."""
    sums = np.zeros(3)  # sum of means, of squared means, of variances
    entries = 0
    for start in shard_starts(count, shard_size):
        with np.load(shard_path(run_dir, "train", start), allow_pickle=False) as shard:
            mean, std = shard["mean"].astype(np.float64), shard["std"].astype(np.float64)
        sums += (mean.sum(), (mean**2).sum(), (std**2).sum())
        entries += mean.size
    return measured_scale(sums[0], sums[1], sums[2], entries)

"""Frozen feature networks that give one feature vector per image patch: the targets of representation alignment.

Each maps images ``(B, C, S, S)`` in [-1, 1] at its ``input_size`` to a spatial feature map ``(B, dim, h, w)``:

- ``digits`` / ``mnist``: the shipped digit classifiers (:mod:`diffusion.evaluation.classifier`). Their last
  spatial map, the second conv stage after its ReLU and pooling (64 channels at S/4 x S/4: 7 x 7 for MNIST),
  carries the class evidence of each image region; the flattening linear layer after it mixes the regions, so the
  map, not the 128-wide penultimate vector, is what a patch token can be aligned with.
- ``dinov2``: DINOv2 (Oquab et al. 2024) through ``transformers``' ``Dinov2Model`` from a local folder, as in
  REPA (Yu et al. 2025): the final-layer-normed patch tokens of ImageNet-normalised images at 224 x 224 (the
  paper's resize of 256 x 256 images), 16 x 16 patches of 14 pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import nn

from diffusion.autoencoders.kl import state_digest
from diffusion.evaluation.classifier import MNIST_WEIGHTS_PATH, WEIGHTS_PATH, load_digit_classifier
from diffusion.runtime.checks import ConfigError, check_choice

PatchEncoderName = Literal["digits", "mnist", "dinov2"]
PATCH_ENCODERS: tuple[str, ...] = ("digits", "mnist", "dinov2")
_CONV_STAGES = 10  # DigitClassifier.trunk[:10]: both conv stages, through the second max-pool
DINOV2_INPUT_SIZE = 224  # REPA resizes 256 x 256 images to DINOv2's 224 x 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ClassifierPatchFeatures(nn.Module):
    """The digit classifier's last spatial map ``(B, 64, S/4, S/4)`` of images ``(B, 1, S, S)`` in [-1, 1]."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        classifier = load_digit_classifier(path=path)
        self.trunk = classifier.trunk[:_CONV_STAGES]
        self.input_size, self.channels = classifier.image_size, 1
        self.dim = self.trunk[-3].out_channels  # the last Conv2d

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.trunk(images)


class Dinov2PatchFeatures(nn.Module):
    """DINOv2's patch tokens as a map ``(B, D, 16, 16)`` of RGB images ``(B, 3, 224, 224)`` in [-1, 1], from a
    ``transformers`` ``Dinov2Model`` (:func:`load_patch_encoder` reads one from a local folder)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network.eval().requires_grad_(False)
        self.input_size, self.channels = DINOV2_INPUT_SIZE, 3
        self.dim = int(self.network.config.hidden_size)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = ((images + 1) / 2 - self.mean) / self.std
        tokens = self.network(pixel_values=pixels).last_hidden_state[:, 1:]  # (B, h * w, D): the class token dropped
        side = images.shape[-1] // int(self.network.config.patch_size)
        return tokens.transpose(1, 2).reshape(len(images), self.dim, side, side)


def load_patch_encoder(name: PatchEncoderName, path: str | None = None, key: str = "method.repa.encoder") -> nn.Module:
    """The frozen encoder ``name`` in eval mode: the shipped classifier weights (or those at ``path``), or the DINOv2
    folder ``path``. It has ``input_size``, ``channels`` and ``dim`` attributes. ``key``: the config key naming it.

    Raises:
        ConfigError: naming ``key`` or ``method.repa.encoder_path``.
    """
    check_choice(name, key, PATCH_ENCODERS)
    if name == "dinov2":
        if path is None or not (Path(path) / "config.json").is_file():
            raise ConfigError(f"method.repa.encoder_path={path} must be a local folder holding a DINOv2 model "
                              "(config.json and weights, as Dinov2Model.save_pretrained writes them)")
        from transformers import Dinov2Model  # only this encoder needs transformers

        encoder: nn.Module = Dinov2PatchFeatures(Dinov2Model.from_pretrained(path, local_files_only=True))
    else:
        weights = Path(path) if path is not None else (MNIST_WEIGHTS_PATH if name == "mnist" else WEIGHTS_PATH)
        if not weights.is_file():
            raise ConfigError(f"method.repa.encoder_path={path}: no classifier weights at {weights}")
        encoder = ClassifierPatchFeatures(weights)
    return encoder.eval().requires_grad_(False)


def encoder_identity(name: str, encoder: nn.Module) -> dict[str, str]:
    """What made a set of patch features: the encoder's name and the sha256 of its weights (whatever file held them),
    recorded with stored features and compared with the encoder a run names."""
    return {"encoder": name, "weights_sha256": state_digest(encoder.state_dict())}

"""REPA, representation alignment (Yu et al. 2025): a transformer block's patch tokens, projected by a small MLP,
are pulled towards a frozen encoder's features of the clean image, which makes diffusion transformers train faster.

Notation (paper Sec. 3.2): h_t = the tokens ``(B, N, D)`` of the noisy input after block ``depth``; h_phi = the
projector MLP; y_* = the encoder's patch features ``(B, N, D_enc)`` of the clean image x_*. The loss (eq. 8) is

    L_REPA = -E[ 1/N sum_n  sim(y_*^[n], h_phi(h_t^[n])) ]          sim = cosine similarity
    L      = L_method + lambda L_REPA                                (eq. 9; lambda = ``weight``)

Per-token targets: the encoder's spatial feature map interpolated (bilinear) to the token grid when their sides
differ (DINOv2's 16 x 16 patches match SiT/2's 256 tokens exactly; a digit classifier's S/4 map matches a patch-4
DiT on 28 x 28 MNIST exactly). The wrapper works for every method: it captures the tokens of the one network
forward pass that runs with gradients inside ``method.compute_loss`` (the prediction trained; the targets that
MeanFlow and shortcut models compute run without gradients), so no method changes.

Latent data: the clean image is not in the batch, so its features come with it: built without an image shape,
the wrapper takes ``encoder_features`` ``(B, D_enc, h, w)`` in ``compute_loss``'s keyword arguments (stored beside
the latents by ``task=encode encode.features=<encoder>``, :meth:`diffusion.data.latents.LatentData.loss_inputs`)
and runs no encoder at all.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.methods.base import BaseMethod
from diffusion.runtime.checks import ConfigError, check_bool, check_float, check_int


class Projector(nn.Sequential):
    """h_phi: ``Linear(D, hidden) -> SiLU -> Linear(hidden, hidden) -> SiLU -> Linear(hidden, D_enc)`` (the paper's
    three-layer MLP, hidden 2048), applied to each token."""

    def __init__(self, width: int, hidden: int, encoder_dim: int) -> None:
        super().__init__(nn.Linear(width, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                         nn.Linear(hidden, encoder_dim))


def alignment_loss(projected: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_REPA: minus the cosine similarity of ``projected`` and ``target`` ``(B, N, D_enc)``, averaged over tokens
    and batch (eq. 8)."""
    return -F.cosine_similarity(projected.float(), target.float(), dim=-1).mean()


def token_targets(features: torch.Tensor, side: int) -> torch.Tensor:
    """An encoder's map ``(B, D_enc, h, w)`` as one target per token ``(B, side^2, D_enc)``, row-major like the
    patch tokens; bilinear interpolation where ``h != side``."""
    if features.shape[-1] != side or features.shape[-2] != side:
        features = F.interpolate(features.float(), size=(side, side), mode="bilinear", align_corners=False)
    return features.flatten(2).transpose(1, 2)


class TokenCapture:
    """A forward hook on one block that keeps its output, only while :meth:`active` and only from a forward pass with
    gradients: the hook stays registered (copies of the network, such as the EMA, carry it inert)."""

    def __init__(self, block: nn.Module) -> None:
        self.active = False
        self.outputs: list[torch.Tensor] = []
        block.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        if self.active and torch.is_grad_enabled():
            self.outputs.append(output)

    def take(self) -> torch.Tensor | None:
        """The captured output ``(B, prefix + N, D)`` (None when no pass had gradients: validation)."""
        outputs, self.outputs, self.active = self.outputs, [], False
        assert len(outputs) <= 1, f"{len(outputs)} network passes with gradients in one loss; REPA expects one"
        return outputs[0] if outputs else None


class RepresentationAlignment(nn.Module):
    """The Trainer's "method" with REPA on: ``method``'s loss plus ``weight`` times L_REPA on ``network``'s tokens
    after block ``depth`` (1-based; None: a third of the blocks, near the paper's 8 of 28). ``trainable`` (the
    projector) is trained, clipped and checkpointed with the network. Settings: ``method.repa`` (conf/common/repa.yaml).
    ``image_shape`` None: the batch is not the images (latents), whose features each batch brings; the encoder is
    then never run (its ``dim`` sizes the projector).

    Raises:
        ConfigError: naming the ``method.repa.*`` key (or ``model``) that does not fit.
    """

    def __init__(self, method: BaseMethod, network: nn.Module, encoder: nn.Module, image_shape: tuple[int, ...] | None,
                 *, weight: float = 0.5, depth: int | None = None, projector_dim: int = 2048,
                 resize: bool = False) -> None:
        super().__init__()
        if not hasattr(network, "token_layout"):
            raise ConfigError(f"method.repa.weight={weight} aligns patch tokens, which {type(network).__name__} has "
                              "none of: use model=dit or model=uvit, or set method.repa.weight=0")
        layout = network.token_layout()
        self.depth = check_depth(depth, len(layout.blocks))
        self.weight = check_float(weight, "method.repa.weight", minimum=0.0, inclusive=False)
        self.method, self.encoder, self.prefix, self.side = method, encoder, layout.prefix, layout.side
        self.num_timesteps = method.num_timesteps
        resize = check_bool(resize, "method.repa.resize")
        self.stored_features = image_shape is None
        self.resize = False if image_shape is None else check_encoder_input(encoder, image_shape, resize)
        self.projector = Projector(layout.width, check_int(projector_dim, "method.repa.projector_dim", minimum=1),
                                   encoder.dim)
        self.capture = TokenCapture(layout.blocks[self.depth - 1])

    @property
    def trainable(self) -> nn.Module:
        """What this method trains beside the network: the projector (the encoder stays frozen)."""
        return self.projector

    def compute_loss(self, model: nn.Module, x0: torch.Tensor, *, t: torch.Tensor | None = None,
                     noise: torch.Tensor | None = None, **model_kwargs: Any) -> torch.Tensor:
        """L_method + lambda L_REPA (eq. 9); the method's loss alone where no pass had gradients (validation)."""
        features = model_kwargs.pop("encoder_features", None)  # (B, D_enc, h, w) stored with latents
        self.capture.active = True
        try:
            loss = self.method.compute_loss(model, x0, t=t, noise=noise, **model_kwargs)
        finally:
            tokens = self.capture.take()
        if tokens is None:
            return loss
        assert features is not None or not self.stored_features, "a latent batch comes with its encoder features"
        targets = token_targets(self.encode(x0) if features is None else features, self.side)  # (B, N, D_enc)
        projected = self.projector(tokens[:, self.prefix:])  # (B, N, D_enc)
        return loss + self.weight * alignment_loss(projected, targets.to(projected.device))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """y_*: the frozen encoder's map ``(B, D_enc, h, w)`` of clean images ``(B, C, H, W)`` in [-1, 1]."""
        return encoder_features(self.encoder, images, self.resize)


@torch.no_grad()
def encoder_features(encoder: nn.Module, images: torch.Tensor, resize: bool) -> torch.Tensor:
    """y_*: ``encoder``'s map ``(B, D_enc, h, w)`` of clean images ``(B, C, H, W)`` in [-1, 1], resized to its input
    first where ``resize`` (what training computes each step, and ``task=encode`` stores beside latents)."""
    if resize:
        size = (encoder.input_size, encoder.input_size)
        images = F.interpolate(images.float(), size=size, mode="bicubic", align_corners=False, antialias=True)
    if images.shape[1] != encoder.channels:
        images = images.expand(-1, encoder.channels, -1, -1)  # grey to RGB
    return encoder(images.float())


def check_depth(depth: int | None, blocks: int) -> int:
    """The aligned block, 1-based: ``depth``, or a third of the ``blocks`` for None.

    Raises:
        ConfigError: naming ``method.repa.depth`` when it is not a block of the backbone.
    """
    if depth is None:
        return max(1, round(blocks / 3))
    check_int(depth, "method.repa.depth")
    if not 1 <= depth <= blocks:
        raise ConfigError(f"method.repa.depth={depth} is not a block of this backbone, which has {blocks} "
                          f"(model.depth): choose 1..{blocks}")
    return depth


def check_encoder_input(encoder: nn.Module, image_shape: tuple[int, ...], resize: bool,
                        key: str = "method.repa.encoder") -> bool:
    """Whether images of ``image_shape`` (C, H, W) must be resized to the encoder's input; refuses what cannot fit.
    ``key``: the config key naming the encoder.

    Raises:
        ConfigError: naming ``method.repa.resize`` (sizes) or ``key`` (channels).
    """
    if len(image_shape) != 3:
        raise ConfigError(f"method.repa.weight > 0 needs image data (C, H, W); the data's samples have shape "
                          f"{list(image_shape)}")
    channels, height, width = image_shape
    if channels != encoder.channels and channels != 1:
        raise ConfigError(f"{key} takes {encoder.channels}-channel images; the data's have {channels}: "
                          "choose an encoder for them")
    if (height, width) == (encoder.input_size, encoder.input_size):
        return False
    if not resize:
        raise ConfigError(f"method.repa.resize=false: the encoder sees {encoder.input_size}x{encoder.input_size} "
                          f"images and the data's are {height}x{width}; set method.repa.resize=true to resize them (or "
                          f"choose an encoder of their size with {key})")
    return True

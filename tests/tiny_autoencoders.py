"""What the latent-space tests share: a tiny randomly initialised ``AutoencoderKL`` saved by ``save_pretrained``
(a stand-in for the SD-VAE folder; nothing is downloaded), tiny run settings for every step of the latent path, and
twelve images that flip.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from diffusion.data.base import BaseData, DataSplits

TINY_OWN = [  # task=train_autoencoder on digits: 8x8 -> 4x4x2, a few steps
    "task=train_autoencoder", "autoencoder=own", "trainer=fast", "trainer.epochs=1", "trainer.max_steps=2",
    "trainer.progress=false", "trainer.precision=fp32", "autoencoder.network.down_channels=[4,4]",
    "autoencoder.network.latent_channels=2", "autoencoder.network.norm_groups=2", "evaluator.num_samples=16",
]
TINY_LATENT_DIT = [  # a flow-matching DiT on those latents, a few steps
    "data=latents", "model=dit", "model.patch_size=1", "model.depth=1", "model.hidden_size=16", "model.num_heads=2",
    "method=flow_matching", "trainer=fast", "trainer.epochs=2", "trainer.progress=false", "trainer.precision=fp32",
    "trainer.batch_size=256", "sampler.num_samples=8", "sampler.steps=2", "evaluator=digits",
    "evaluator.num_samples=8", "evaluator.floor_draws=4", "evaluator.bootstrap=0",
]


def save_tiny_vae(folder: Path, seed: int = 0, **config: object) -> str:
    """A one-block ``AutoencoderKL`` for 8x8 grayscale images (8x8x2 latents) saved in ``folder``; returns the
    sha256 of its weights file."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    settings = {"in_channels": 1, "out_channels": 1, "block_out_channels": (4,), "norm_num_groups": 2,
                "latent_channels": 2, "sample_size": 8, **config}
    AutoencoderKL(**settings).save_pretrained(folder)  # type: ignore[arg-type]
    return hashlib.sha256((folder / "diffusion_pytorch_model.safetensors").read_bytes()).hexdigest()


class FlippingImages(BaseData):
    """Twelve labelled 8x8 images that flip (as CIFAR-10 does)."""

    kind, random_flip = "image", True

    @property
    def sample_shape(self):
        return (1, 8, 8)

    @property
    def num_classes(self):
        return 3

    def _load(self):
        images = torch.linspace(-1, 1, 12 * 64).reshape(12, 1, 8, 8)
        labels = torch.arange(12) % 3
        return DataSplits(images[:9], images[9:], labels[:9], labels[9:])

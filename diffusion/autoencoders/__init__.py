"""Autoencoders whose latent space a diffusion model can train in (``autoencoder=sd_vae|own``)."""

from diffusion.autoencoders.kl import (
    LatentAutoencoder,
    LatentDecoder,
    Posterior,
    autoencoder_kl,
    load_pretrained,
    measured_scale,
    state_digest,
)
from diffusion.autoencoders.loss import AutoencoderLoss
from diffusion.autoencoders.own import load_own

__all__ = [
    "AutoencoderLoss",
    "LatentAutoencoder",
    "LatentDecoder",
    "Posterior",
    "autoencoder_kl",
    "load_own",
    "load_pretrained",
    "measured_scale",
    "state_digest",
]

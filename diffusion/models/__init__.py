"""Denoising networks: a U-Net for images and a residual MLP for points, sharing one time/class embedding."""

from diffusion.models.embeddings import TimeEmbedding, timestep_embedding
from diffusion.models.mlp import MLP
from diffusion.models.unet import UNet

__all__ = ["MLP", "TimeEmbedding", "UNet", "timestep_embedding"]

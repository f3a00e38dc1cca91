"""Denoising networks: U-Nets for images (ours and DDPM's) and a residual MLP for points, sharing one time/class
embedding."""

from diffusion.models.ddpm_unet import DDPMUNet
from diffusion.models.dit import DiT
from diffusion.models.edm2_unet import EDM2UNet
from diffusion.models.embeddings import TimeEmbedding, timestep_embedding
from diffusion.models.mlp import MLP
from diffusion.models.unet import UNet
from diffusion.models.uvit import UViT

__all__ = ["DDPMUNet", "DiT", "EDM2UNet", "MLP", "TimeEmbedding", "UNet", "UViT", "timestep_embedding"]

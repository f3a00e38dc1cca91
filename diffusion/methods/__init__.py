from diffusion.methods.base import PREDICTIONS, SPACINGS, BaseMethod, Prediction, TimestepSpacing
from diffusion.methods.ddim import DDIM
from diffusion.methods.ddpm import DDPM

__all__ = ["BaseMethod", "DDIM", "DDPM", "PREDICTIONS", "Prediction", "SPACINGS", "TimestepSpacing"]

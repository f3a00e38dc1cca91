from diffusion.methods.base import (
    LOSS_WEIGHTINGS,
    PREDICTIONS,
    SPACINGS,
    BaseMethod,
    LossWeighting,
    Prediction,
    TimestepSpacing,
)
from diffusion.methods.consistency import Consistency
from diffusion.methods.ddim import DDIM
from diffusion.methods.ddpm import DDPM
from diffusion.methods.dpm_solver import DPMSolver

__all__ = [
    "BaseMethod",
    "Consistency",
    "DDIM",
    "DDPM",
    "DPMSolver",
    "LOSS_WEIGHTINGS",
    "LossWeighting",
    "PREDICTIONS",
    "Prediction",
    "SPACINGS",
    "TimestepSpacing",
]

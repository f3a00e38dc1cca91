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
from diffusion.methods.edm import EDM
from diffusion.methods.sigma_space import DPMpp2MKarras, Euler, Heun, SigmaSpaceDDPM, SigmaSpaceMethod

__all__ = [
    "BaseMethod",
    "Consistency",
    "DDIM",
    "DDPM",
    "DPMSolver",
    "DPMpp2MKarras",
    "EDM",
    "Euler",
    "Heun",
    "LOSS_WEIGHTINGS",
    "LossWeighting",
    "PREDICTIONS",
    "Prediction",
    "SPACINGS",
    "SigmaSpaceDDPM",
    "SigmaSpaceMethod",
    "TimestepSpacing",
]

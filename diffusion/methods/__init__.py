from diffusion.methods.base import BaseMethod, GridKind
from diffusion.methods.consistency import Consistency
from diffusion.methods.ect import ConsistencyTuning
from diffusion.methods.edm import EDM
from diffusion.methods.flow_matching import FlowMatching, PairedFlowMatching
from diffusion.methods.gaussian import LOSS_WEIGHTINGS, PREDICTIONS, GaussianDiffusion, LossWeighting, Prediction
from diffusion.methods.meanflow import MeanFlow
from diffusion.methods.scm import SCM
from diffusion.methods.schedules import SPACINGS, TimestepSpacing
from diffusion.methods.shortcut import Shortcut

__all__ = [
    "BaseMethod",
    "Consistency",
    "ConsistencyTuning",
    "EDM",
    "FlowMatching",
    "GaussianDiffusion",
    "GridKind",
    "PairedFlowMatching",
    "LOSS_WEIGHTINGS",
    "LossWeighting",
    "MeanFlow",
    "PREDICTIONS",
    "Prediction",
    "SCM",
    "SPACINGS",
    "Shortcut",
    "TimestepSpacing",
]

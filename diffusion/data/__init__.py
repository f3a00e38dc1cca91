"""Data sets: each yields a fixed, seeded train/validation split of whole tensors (see :class:`BaseData`)."""

from diffusion.data.base import BaseData, DataSplits
from diffusion.data.digits import DigitsData
from diffusion.data.image_folder import ImageFolderData
from diffusion.data.points import MoonsData, PointsData, SwissRollData
from diffusion.data.split import train_val_indices

__all__ = [
    "BaseData",
    "DataSplits",
    "DigitsData",
    "ImageFolderData",
    "MoonsData",
    "PointsData",
    "SwissRollData",
    "train_val_indices",
]

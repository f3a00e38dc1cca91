"""Data sets: each yields a fixed, seeded train/validation split of whole tensors (see :class:`BaseData`)."""

from diffusion.data.base import (
    BaseData,
    DataSplits,
    batch_generator_seed,
    random_horizontal_flip,
)
from diffusion.data.cifar10 import CIFAR10Data
from diffusion.data.digits import DigitsData
from diffusion.data.image_folder import ImageFolderData
from diffusion.data.mnist import MNISTData
from diffusion.data.pairs import PairedData
from diffusion.data.points import MoonsData, PointsData, SwissRollData
from diffusion.data.split import train_val_indices
from diffusion.data.synthetic import SyntheticData
from diffusion.data.uint8_images import Uint8ImageData

__all__ = [
    "BaseData",
    "CIFAR10Data",
    "DataSplits",
    "DigitsData",
    "ImageFolderData",
    "MNISTData",
    "MoonsData",
    "PairedData",
    "PointsData",
    "SwissRollData",
    "SyntheticData",
    "Uint8ImageData",
    "batch_generator_seed",
    "random_horizontal_flip",
    "train_val_indices",
]

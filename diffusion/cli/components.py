"""The components ``run.py`` builds for a task, and the checks that span two of them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from diffusion.data.base import BaseData
from diffusion.methods.base import BaseMethod
from diffusion.validation import ConfigError


@dataclass
class Components:
    data: BaseData
    model: nn.Module
    method: BaseMethod
    run_dir: Path


def check_compatible(data: BaseData, model: nn.Module, data_target: str, model_target: str) -> None:
    """An image network needs image data and a point network point data.

    Raises:
        ConfigError: naming the ``model`` option to choose instead.
    """
    from diffusion.models import MLP, UNet

    if data.kind == "points" and isinstance(model, UNet):
        raise ConfigError(f"model=unet needs image data but data is {data_target}; use model=mlp")
    if data.kind == "image" and isinstance(model, MLP):
        raise ConfigError(f"model=mlp takes 2-D points but data is {data_target}; use model=unet")

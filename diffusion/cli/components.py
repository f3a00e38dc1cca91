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


def check_compatible(data: BaseData, model_class: type, data_choice: str) -> None:
    """An image network needs image data and a point network point data; checked before the model is built.

    Raises:
        ConfigError: naming the ``model`` option to choose instead.
    """
    from diffusion.models import MLP, UNet

    if data.kind == "points" and issubclass(model_class, UNet):
        raise ConfigError(f"model=unet needs image data but data={data_choice}; use model=mlp")
    if data.kind == "image" and issubclass(model_class, MLP):
        raise ConfigError(f"model=mlp takes 2-D points but data={data_choice}; use model=unet")

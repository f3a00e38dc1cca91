"""The components ``run.py`` builds for a task, and the checks that span two of them."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from diffusion.data.base import BaseData
from diffusion.evaluation.evaluators import BaseEvaluator
from diffusion.methods.base import BaseMethod
from diffusion.runtime.checks import ConfigError


@dataclass
class Components:
    """What every task builds from the config: the data set, the network and the diffusion method."""

    data: BaseData
    model: nn.Module
    method: BaseMethod


def check_monitor(monitor: str, evaluator: BaseEvaluator) -> None:
    """``trainer.monitor`` other than the validation loss is computed by evaluations during training only.

    Raises:
        ConfigError: naming ``evaluator.every_n_epochs`` and ``trainer.monitor``.
    """
    if monitor in ("val_loss", "val/loss"):
        return
    if evaluator.enabled and monitor not in evaluator.metric_names:
        raise ConfigError(
            f"trainer.monitor={monitor} is not a metric of this evaluator (it computes: "
            f"{', '.join(evaluator.metric_names)}); choose one of those, or trainer.monitor=val_loss"
        )
    if not evaluator.every_n_epochs:
        raise ConfigError(
            f"trainer.monitor={monitor} is computed only by evaluations during training: set "
            "evaluator.every_n_epochs=N, or trainer.monitor=val_loss"
        )


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

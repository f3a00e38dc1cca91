"""The ``method`` node of a config: the formulation's own arguments, and ``method.repa`` (conf/common/repa.yaml),
REPA's settings, which configure the Trainer's alignment wrapper (:func:`diffusion.app.build.make_alignment`)
rather than the formulation's class. Every place that builds a method from a config builds it here."""

from __future__ import annotations

import copy
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

REPA_KEY = "repa"


def formulation_config(node: DictConfig) -> DictConfig:
    """``node`` without ``repa``: the arguments the method's ``_target_`` takes (interpolations still resolve)."""
    if REPA_KEY not in node:
        return node
    own = copy.deepcopy(node)
    with open_dict(own):
        own.pop(REPA_KEY)
    return own


def make_method(node: DictConfig, **arguments: Any) -> Any:
    """The method ``node`` configures (its ``repa`` settings left to the Trainer's wrapper)."""
    return instantiate(formulation_config(node), _convert_="all", **arguments)


def repa_settings(node: DictConfig) -> DictConfig | None:
    """``method.repa`` of the method ``node`` when REPA is on (a non-zero ``weight``), else None."""
    settings = node.get(REPA_KEY)
    return settings if settings is not None and settings.get("weight") else None

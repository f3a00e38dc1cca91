"""What the backbone tests share: a composed configuration's network summarised as ``task=summary`` does
(built on the meta device: a paper-sized network costs no memory), and the relative gap to a paper's figure."""

from __future__ import annotations

from pathlib import Path

import torch

from diffusion.app.build import build_network
from diffusion.app.hydra_run import HydraRun
from diffusion.tasks.summary import NetworkSummary, summarize
from runs import compose_config


def summary_of(*overrides: str) -> NetworkSummary:
    """``python run.py task=summary <overrides>``'s figures, in this process."""
    with torch.device("meta"):
        data, _, model = build_network(compose_config(*overrides), HydraRun(output_dir=Path(".")))
    return summarize(model, data.sample_shape)


def relative_gap(measured: float, paper: float) -> float:
    return abs(measured - paper) / paper

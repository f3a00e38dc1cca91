"""Files that describe a run: its resolved config and overrides, and the config tree its log starts with."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf


def save_run_config(cfg: DictConfig | Mapping[str, Any], run_dir: Path, overrides: Sequence[str]) -> None:
    """``config.yaml`` (resolved: what ``task=sample`` rebuilds from) and ``overrides.yaml``; a resumed run keeps its
    first ``config.yaml`` and gets ``config.resume.yaml``.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    name = "config.resume.yaml" if (run_dir / "config.yaml").exists() else "config.yaml"
    OmegaConf.save(OmegaConf.create(cfg), run_dir / name, resolve=True)
    OmegaConf.save(OmegaConf.create(list(overrides)), run_dir / name.replace("config", "overrides"))


def print_config_tree(cfg: DictConfig | Mapping[str, Any]) -> None:
    """The resolved config as an indented tree, groups first, so a run's log starts with what it ran."""
    print("config (saved as config.yaml):")
    for line in OmegaConf.to_yaml(OmegaConf.create(cfg), resolve=True).splitlines():
        print(f"  {line}")

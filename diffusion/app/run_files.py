"""Files that describe a run: its resolved config and overrides, and the listing printed at the end."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def save_run_config(cfg: DictConfig, run_dir: Path, overrides: Sequence[str]) -> None:
    """``config.yaml`` (resolved, what ``task=sample`` rebuilds the model from) and ``overrides.yaml``.

    A resumed run keeps the config it started with under ``config.yaml`` and gets ``config.resume.yaml``.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    name = "config.resume.yaml" if (run_dir / "config.yaml").exists() else "config.yaml"
    OmegaConf.save(cfg, run_dir / name, resolve=True)
    OmegaConf.save(OmegaConf.create(list(overrides)), run_dir / name.replace("config", "overrides"))


def print_run_files(run_dir: Path) -> None:
    print(f"\nrun directory: {run_dir.resolve()}")
    for path in sorted(run_dir.rglob("*")):
        relative = path.relative_to(run_dir)
        if relative.parts[0] == "wandb":  # W&B's own files: `wandb sync <run dir>/wandb/offline-run-*`
            continue
        if path.is_file() and not path.name.startswith(".") and path.name != "run.lock":  # the lock leaves at exit
            print(f"  {relative}")


def print_config_tree(cfg: DictConfig) -> None:
    """The resolved config as an indented tree, groups first, so a run's log starts with what it ran."""
    print("config (saved as config.yaml):")
    for line in OmegaConf.to_yaml(cfg, resolve=True).splitlines():
        print(f"  {line}")

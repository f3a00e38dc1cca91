"""Names and flat views of a run's configuration, for trackers that filter and group runs by them, and the
key the validation loss is logged under.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

VAL_LOSS = "val/loss"  # the key the validation loss is logged under
MAX_RUN_NAME = 128  # W&B truncates display names around here; keep the end of the name readable
# Overrides that say where or how a run executes, not what it is: left out of run names.
NOISY_OVERRIDES = (
    "hydra",
    "run_dir",
    "resume",
    "logger",
    "trainer.progress",
    "trainer.device",
)


def flatten_config(cfg: Mapping[str, Any], sep: str = ".") -> dict[str, Any]:
    """``{"trainer": {"lr": 1e-4}}`` -> ``{"trainer.lr": 1e-4}``; lists and scalars stay values, an empty mapping
    stays ``{}`` under its key so the key is still visible.
    """
    flat: dict[str, Any] = {}
    for key, value in cfg.items():
        name = str(key)
        if isinstance(value, Mapping) and value:
            for sub_key, sub_value in flatten_config(value, sep).items():
                flat[f"{name}{sep}{sub_key}"] = sub_value
        elif isinstance(value, Mapping):
            flat[name] = {}
        elif isinstance(value, tuple):
            flat[name] = list(value)
        else:
            flat[name] = value
    return flat


def override_key(override: str) -> str:
    """The config key an override sets: ``+trainer.lr=1e-4`` -> ``trainer.lr``, ``hydra/launcher=joblib`` ->
    ``hydra/launcher``."""
    return override.split("=", 1)[0].lstrip("+~")


def is_noisy(key: str) -> bool:
    for noisy in NOISY_OVERRIDES:
        if key == noisy or key.startswith((noisy + ".", noisy + "/")):
            return True
    return False


def run_name_from_overrides(overrides: Sequence[str]) -> str | None:
    """A run name from the overrides that define the experiment: ``method=ddim,schedule=cosine``.

    Where-it-runs keys (:data:`NOISY_OVERRIDES`) are skipped; None when nothing is left. Over
    :data:`MAX_RUN_NAME` characters keys are shortened to their last part (``lr=3e-4``), then the middle is cut.
    """
    kept = [o.lstrip("+") for o in overrides if "=" in o and not is_noisy(override_key(o))]
    if not kept:
        return None
    name = ",".join(kept)
    if len(name) > MAX_RUN_NAME:
        name = ",".join(_short_override(o) for o in kept)
    if len(name) > MAX_RUN_NAME:
        half = (MAX_RUN_NAME - 3) // 2
        name = name[:half] + "..." + name[-half:]
    return name


def _short_override(override: str) -> str:
    key, value = override.split("=", 1)
    return f"{key.rsplit('.', 1)[-1]}={value}"


def sweep_group(sweep_dir: str | Path) -> str:
    """A group name for the jobs of one sweep: ``outputs/multirun/2024-05-01/12-00-00`` -> ``2024-05-01_12-00-00``
    (the sweep directory's last two parts, so that sweeps of different days stay apart)."""
    parts = Path(sweep_dir).parts
    return "_".join(parts[-2:]) if parts else "sweep"


def is_val_loss(monitor: str) -> bool:
    """Whether ``trainer.monitor`` names the validation loss: ``val_loss`` (the config's spelling) or
    :data:`VAL_LOSS` (the logged key)."""
    return monitor in ("val_loss", VAL_LOSS)


def logged_key(monitor: str) -> str:
    """The key under which ``trainer.monitor``'s value is logged."""
    return VAL_LOSS if is_val_loss(monitor) else monitor

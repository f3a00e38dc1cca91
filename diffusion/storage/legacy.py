"""Configs written by earlier versions of this package: their ``_target_`` paths, mapped to where the same
component lives now, so that an old run directory or export still samples, evaluates, resumes and exports."""

from __future__ import annotations

from typing import Any

# Old module -> its home now (the package was regrouped into runtime/, storage/, training/, sampling/, tasks/).
MOVED_MODULES = {
    "diffusion.trainer": "diffusion.training.trainer",
    "diffusion.file_manager": "diffusion.storage.file_manager",
    "diffusion.schedules": "diffusion.methods.schedules",
    "diffusion.sampler": "diffusion.sampling.sampler",
    "diffusion.cli": "diffusion.app",
}
# Old targets that name something other than a moved module's member (a method that was really a solver).
MOVED_TARGETS: dict[str, str] = {}


def upgrade_targets(node: Any) -> Any:
    """``node`` (a config as plain dicts and lists) with every ``_target_`` of an earlier version rewritten."""
    if isinstance(node, list):
        return [upgrade_targets(item) for item in node]
    if not isinstance(node, dict):
        return node
    upgraded = {key: upgrade_targets(value) for key, value in node.items()}
    target = upgraded.get("_target_")
    if isinstance(target, str):
        upgraded["_target_"] = upgrade_target(target)
    return upgraded


def upgrade_target(target: str) -> str:
    if target in MOVED_TARGETS:
        return MOVED_TARGETS[target]
    module, _, name = target.rpartition(".")
    return f"{MOVED_MODULES[module]}.{name}" if module in MOVED_MODULES else target

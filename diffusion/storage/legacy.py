"""Configs written by earlier versions of this package: their ``_target_`` paths and moved keys, mapped to where
the same component or setting lives now, so that an old run directory or export still samples, evaluates, resumes
and exports."""

from __future__ import annotations

from typing import Any

# Module paths of earlier versions -> where the same code lives now.
MOVED_MODULES = {
    "diffusion.trainer": "diffusion.training.trainer",
    "diffusion.file_manager": "diffusion.storage.file_manager",
    "diffusion.schedules": "diffusion.methods.schedules",
    "diffusion.sampler": "diffusion.sampling.sampler",
    "diffusion.cli": "diffusion.app",
}
# Old targets that name something other than a moved module's member.
MOVED_TARGETS: dict[str, str] = {}
GAUSSIAN = "diffusion.methods.GaussianDiffusion"
# Old method classes that were the Gaussian diffusion sampled by one solver, or a solver posing as a method:
# their target -> that solver, now the default solver of the formulation it trained.
SOLVER_METHODS = {
    **{f"diffusion.methods.{name}": solver for name, solver in (
        ("DDPM", "ddpm"), ("DDIM", "ddim"), ("DPMSolver", "dpm_solver"), ("Euler", "euler"), ("Heun", "heun"),
        ("DPMpp2MKarras", "dpmpp_2m_karras"))},
    "diffusion.methods.ddpm.DDPM": "ddpm",
    "diffusion.methods.ddim.DDIM": "ddim",
    "diffusion.methods.dpm_solver.DPMSolver": "dpm_solver",
    **{f"diffusion.methods.sigma_space.{name}": name for name in ("euler", "heun", "dpmpp_2m_karras")},
}
# Top-level config keys that moved into a group: old key -> new dotted key (REPA's settings belong to the method).
MOVED_KEYS = {"repa": "method.repa"}
# EDM's old ``solver`` key named the Karras solvers by their function.
EDM_SOLVERS = {"heun": "heun", "euler": "euler", "dpmpp_2m": "dpmpp_2m_karras"}


def upgrade_config(config: dict[str, Any]) -> dict[str, Any]:
    """A whole run config (plain dicts) of an earlier version as this version writes it: its ``_target_`` paths
    (:func:`upgrade_targets`) and its :data:`MOVED_KEYS` (a key already at its new place wins)."""
    upgraded = upgrade_targets(config)
    for old, new in MOVED_KEYS.items():
        if old not in upgraded:
            continue
        value = upgraded.pop(old)
        *parents, name = new.split(".")
        node = upgraded
        for parent in parents:
            node = node.setdefault(parent, {})
        node.setdefault(name, value)
    return upgraded


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
        upgrade_method(upgraded, target)
    return upgraded


def upgrade_method(node: dict[str, Any], target: str) -> None:
    """An old method config (in place): a solver-named class becomes the formulation it trained (the Gaussian
    diffusion, or EDM where it holds EDM's keys) with that solver as ``default_solver``; EDM's ``solver`` key
    becomes ``default_solver``."""
    if target in SOLVER_METHODS:
        node["_target_"] = "diffusion.methods.EDM" if "sigma_data" in node else GAUSSIAN
        node.pop("solver", None)
        node.setdefault("default_solver", SOLVER_METHODS[target])
    if node["_target_"] == "diffusion.methods.EDM" and "solver" in node:
        node["default_solver"] = EDM_SOLVERS.get(node.pop("solver"), "heun")


def upgrade_target(target: str) -> str:
    if target in MOVED_TARGETS:
        return MOVED_TARGETS[target]
    module, _, name = target.rpartition(".")
    return f"{MOVED_MODULES[module]}.{name}" if module in MOVED_MODULES else target

"""Scores along the probability-flow ODE that ``task=evaluate`` adds to ``eval.json``: the negative log-likelihood of
held-out data (``evaluator.likelihood``; :mod:`diffusion.evaluation.likelihood`) and a flow's straightness S(Z)
(``evaluator.straightness``; :mod:`diffusion.evaluation.straightness`).

Both are checked before anything is written (:func:`check_ode_scores`), then added to ``eval.json`` atomically:

    "nll":          {"value", "std_error", "unit" (bits/dim | nats), "hutchinson_std_error", "num_points",
                     "divergence" (exact | hutchinson), "dequantization" (the level width, or null), "nfe"}
    "straightness": {"value", "std_error", "steps", "num_samples"}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diffusion.data.base import BaseData
from diffusion.evaluation.likelihood import EXACT_MAX_DIM, negative_log_likelihood
from diffusion.evaluation.straightness import straightness
from diffusion.loggers.base import BaseLogger
from diffusion.methods.base import BaseMethod
from diffusion.runtime.checks import ConfigError, check_bool, check_float, check_int
from diffusion.sampling.noise import SampleNoise
from diffusion.sampling.sampler import Sampler
from diffusion.storage.atomic import atomic_write_text
from diffusion.tasks.seed_sets import json_number as _json_number

# Every evaluator config's keys for these scores (conf/common/ode_scores.yaml): task=evaluate's, not the evaluator's.
ODE_SCORE_KEYS = ("likelihood", "hutchinson_samples", "dequantization", "likelihood_samples", "straightness",
                  "straightness_steps", "straightness_samples")
EIGHT_BIT_WIDTH = 2 / 255  # one level of 8-bit pixels p in [0, 255] mapped to p / 127.5 - 1


@dataclass(frozen=True)
class LikelihoodSettings:
    """``evaluator.likelihood`` and its keys: score the NLL of the first ``num_samples`` validation points;
    ``dequantization`` is the width of one level of discrete data in the model's space (None: 2/255 for 8-bit
    images, none for points)."""

    enabled: bool = False
    hutchinson_samples: int | None = None
    dequantization: float | None = None
    num_samples: int = 500


@dataclass(frozen=True)
class StraightnessSettings:
    """``evaluator.straightness*``: S(Z) of ``num_samples`` Euler trajectories of ``steps`` steps (a flow only)."""

    enabled: bool = False
    steps: int = 100
    num_samples: int = 500


def check_ode_scores(likelihood: LikelihoodSettings, path_straightness: StraightnessSettings,
                     method: BaseMethod, data: BaseData) -> float | None:
    """Check both settings against the run; returns the dequantization width the likelihood uses (None: nats).

    Raises:
        ConfigError: naming the ``evaluator.likelihood*`` or ``evaluator.straightness*`` key: a bad value,
            straightness of a run that is not a flow, or the likelihood of image data that is not 8-bit without
            ``evaluator.dequantization``.
    """
    width = None
    if check_bool(likelihood.enabled, "evaluator.likelihood"):
        check_int(likelihood.num_samples, "evaluator.likelihood_samples", minimum=1)
        if likelihood.hutchinson_samples is not None:
            check_int(likelihood.hutchinson_samples, "evaluator.hutchinson_samples", minimum=0)
        width = level_width(likelihood.dequantization, data)
    if check_bool(path_straightness.enabled, "evaluator.straightness"):
        check_int(path_straightness.steps, "evaluator.straightness_steps", minimum=1)
        check_int(path_straightness.num_samples, "evaluator.straightness_samples", minimum=1)
        if "time" not in method.grids:
            raise ConfigError(f"evaluator.straightness=true needs a flow run (method=flow_matching); method "
                              f"{method.name} has no velocity in time")
    return width


def level_width(dequantization: float | None, data: BaseData) -> float | None:
    """The width of one level of ``data`` in the model's space: the one given, 2/255 for 8-bit images, None
    (continuous: nats) for points.

    Raises:
        ConfigError: naming ``evaluator.dequantization`` for image data whose values are not 8-bit levels.
    """
    if dequantization is not None:
        return check_float(dequantization, "evaluator.dequantization", minimum=0.0, inclusive=False)
    if data.kind == "points":
        return None
    if data.uint8_splits or _on_8bit_levels(data.load().val):
        return EIGHT_BIT_WIDTH
    raise ConfigError("evaluator.dequantization is needed: this run's images are not 8-bit (their values are not "
                      "levels p / 127.5 - 1); give the width of one level in [-1, 1] (17 levels: 0.125)")


def _on_8bit_levels(images: torch.Tensor) -> bool:
    pixels = (images.double() + 1) * 127.5
    return bool(((pixels - pixels.round()).abs() < 1e-3).all())


def ode_scores(likelihood: LikelihoodSettings, path_straightness: StraightnessSettings, width: float | None,
               sampler: Sampler, data: BaseData, seed: int, logger: BaseLogger) -> dict[str, Any]:
    """The ``eval.json`` entries of the enabled scores, for the network ``sampler`` holds (its EMA weights; called
    with y=None, a conditional network gives its unconditional output)."""
    entries: dict[str, Any] = {}
    if likelihood.enabled:
        entries["nll"] = likelihood_entry(likelihood, width, sampler, data, seed, logger)
    if path_straightness.enabled:
        entries["straightness"] = straightness_entry(path_straightness, sampler, logger)
    return entries


def likelihood_entry(settings: LikelihoodSettings, width: float | None, sampler: Sampler, data: BaseData, seed: int,
                     logger: BaseLogger) -> dict[str, Any]:
    """-log p of the first ``settings.num_samples`` validation points (dequantized with ``seed``'s draws)."""
    points = data.prepare_batch(data.load().val[: settings.num_samples]).to(sampler.device)
    generator = torch.Generator(device=sampler.device).manual_seed(seed)
    result = negative_log_likelihood(sampler.method, sampler.model, points, bin_width=width,
                                     hutchinson_samples=settings.hutchinson_samples, generator=generator)
    probes = settings.hutchinson_samples
    exact = probes == 0 or (probes is None and points[0].numel() <= EXACT_MAX_DIM)
    divergence = "exact" if exact else "hutchinson"
    logger.log(f"negative log-likelihood of {len(points)} validation points: {result.mean:.4f} +- "
               f"{result.standard_error:.4f} {result.unit} ({divergence} divergence, {result.nfe} NFE)")
    return {"value": _json_number(result.mean), "std_error": _json_number(result.standard_error),
            "unit": result.unit, "hutchinson_std_error": _json_number(result.hutchinson_standard_error),
            "num_points": len(points), "divergence": divergence, "dequantization": width, "nfe": result.nfe}


def straightness_entry(settings: StraightnessSettings, sampler: Sampler, logger: BaseLogger) -> dict[str, Any]:
    """S(Z) of the trajectories from the first ``settings.num_samples`` samples' own initial noise."""
    noise = SampleNoise(sampler.seed, range(settings.num_samples), sampler.sample_shape)()
    result = straightness(sampler.method, sampler.model, noise.to(sampler.device), steps=settings.steps)
    logger.log(f"straightness S(Z) of {settings.num_samples} trajectories: {result.mean:.5f} +- "
               f"{result.standard_error:.5f} ({settings.steps} Euler steps)")
    return {"value": _json_number(result.mean), "std_error": _json_number(result.standard_error),
            "steps": settings.steps, "num_samples": settings.num_samples}


def add_to_eval_json(directory: Path, entries: dict[str, Any]) -> None:
    """``directory/eval.json`` (as the evaluator wrote it; a new one if it wrote none) with ``entries`` added,
    written again atomically."""
    if not entries:
        return
    path = directory / "eval.json"
    payload = json.loads(path.read_text()) if path.exists() else {}
    payload.update(entries)
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")

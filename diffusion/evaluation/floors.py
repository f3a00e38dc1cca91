"""The real-data floor as a property of the data: a mean and a spread over draws of real data, cached on disk.

One split's floor moves with the split, so it is estimated over ``K`` draws: re-partitions of the pooled real rows
for a small held-out set (fewer than :data:`LARGE_HELDOUT_CHUNKS` chunks of ``n``), else the held-out set's disjoint
chunks of ``n``. Each draw is scored at sample count ``n`` by the evaluator's rule; the floor is their mean,
``floor_std`` their std (the yardstick for the beats-real-data flag), ``floor_std_error`` = std / sqrt(K).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch

from diffusion.storage.atomic import atomic_write_text

# A held-out set holding at least this many disjoint chunks of n is large: its chunks are the draws.
LARGE_HELDOUT_CHUNKS = 10
CACHE_VERSION = 1  # bump when the way a floor is computed changes, so old cache files are not read


class Floor(NamedTuple):
    """A metric's real-data floor: ``mean`` over ``draws``, their ``std`` and the ``std_error`` of the mean."""

    mean: float
    std: float | None
    std_error: float | None
    draws: int


class RealSplit(NamedTuple):
    """Embedded real rows: the ``reference`` ``(R, F)`` scores are taken against, the ``heldout`` rows ``(V, F)``."""

    reference: torch.Tensor
    heldout: torch.Tensor


Scorer = Callable[[torch.Tensor, RealSplit], Mapping[str, float]]


def is_large_heldout(heldout_size: int, n: int) -> bool:
    """Whether the held-out set alone gives enough disjoint chunks of ``n`` to estimate the floor's spread."""
    return heldout_size >= LARGE_HELDOUT_CHUNKS * n


def real_draws(real: RealSplit, n: int, draws: int, seed: int) -> list[tuple[torch.Tensor, RealSplit]]:
    """The (held-out rows, real split) pairs a floor is scored on: disjoint chunks of a large held-out set, else
    ``draws`` seeded re-partitions of reference + held-out into sets of the same sizes."""
    if is_large_heldout(len(real.heldout), n):
        chunks = real.heldout[: len(real.heldout) // n * n].split(n)
        return [(chunk, real) for chunk in chunks]
    pool = torch.cat([real.reference, real.heldout])  # (R + V, F)
    generator = torch.Generator().manual_seed(seed)
    pairs = []
    for _ in range(draws):
        order = torch.randperm(len(pool), generator=generator)
        heldout, reference = pool[order[: len(real.heldout)]], pool[order[len(real.heldout):]]
        pairs.append((heldout, RealSplit(reference, heldout)))
    return pairs


def score_draws(real: RealSplit, n: int, draws: int, seed: int, score: Scorer) -> dict[str, list[float]]:
    """Each metric's value on every draw of :func:`real_draws`; ``score(heldout_rows, split)`` scores one."""
    values: dict[str, list[float]] = {}
    for heldout, split in real_draws(real, n, draws, seed):
        for name, value in score(heldout, split).items():
            values.setdefault(name, []).append(value)
    return values


def estimate_floors(real: RealSplit, n: int, draws: int, seed: int, score: Scorer) -> dict[str, Floor]:
    """Each metric's :class:`Floor`: :func:`summarise` of :func:`score_draws`."""
    return {name: summarise(numbers) for name, numbers in score_draws(real, n, draws, seed, score).items()}


def summarise(numbers: list[float]) -> Floor:
    """Mean, sample std and std / sqrt(K) of the draws (NaN draws, e.g. an undefined score, are left out)."""
    finite = torch.tensor([x for x in numbers if math.isfinite(x)], dtype=torch.float64)
    if len(finite) == 0:
        return Floor(math.nan, None, None, 0)
    if len(finite) == 1:
        return Floor(finite.item(), None, None, 1)
    std = finite.std().item()
    return Floor(finite.mean().item(), std, std / math.sqrt(len(finite)), len(finite))


# --------------------------------------------------------------------------------------------------------- cache


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/diffusion/floors`` (``~/.cache/diffusion/floors`` by default)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "diffusion" / "floors"


def rows_digest(rows: torch.Tensor) -> str:
    """sha256 of embedded rows' float64 bytes: the data and the feature network as the evaluator saw them."""
    return hashlib.sha256(rows.detach().cpu().double().contiguous().numpy().tobytes()).hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks (a feature network's weights)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def floor_cache_key(fields: Mapping[str, Any]) -> str:
    """The cache file's name: sha256 of the canonical JSON of ``fields`` (data set, split sizes, n, feature-network
    digest, draws, scoring options), so any change in them is a different floor."""
    canonical = json.dumps({"version": CACHE_VERSION, **fields}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def cached_floors(
    cache_dir: Path | None, fields: Mapping[str, Any], compute: Callable[[], dict[str, Floor]]
) -> dict[str, Floor]:
    """The floors under ``fields``' key in ``cache_dir``, computed by ``compute`` and written there when absent
    (``cache_dir`` None: no cache). An unreadable file is recomputed and replaced."""
    if cache_dir is None:
        return compute()
    path = cache_dir / f"{floor_cache_key(fields)}.json"
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        return {name: Floor(*entry) for name, entry in stored["floors"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    floors = compute()
    record = {"key": dict(fields), "floors": {name: list(floor) for name, floor in floors.items()}}
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(record, indent=1, default=str, allow_nan=True) + "\n")
    except OSError:  # a read-only cache costs time, not correctness
        pass
    return floors

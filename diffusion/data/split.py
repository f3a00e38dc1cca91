"""The fixed, seeded train/validation split every data set (and the evaluator's classifier) shares."""

from __future__ import annotations

import torch

from diffusion.runtime.checks import ConfigError, check_float, check_int


def train_val_indices(num_items: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle ``range(num_items)`` with ``seed`` and hold out ``round(val_fraction * num_items)`` items.
    Depends only on ``(num_items, seed)``, so every process gets the same split; returns sorted
    ``(train_idx, val_idx)``.
    """
    check_float(val_fraction, "data.val_fraction", 0.0, 1.0, inclusive=False)
    check_int(seed, "data.split_seed")
    num_val = max(1, round(val_fraction * num_items))
    if num_val >= num_items:
        raise ConfigError(f"data.val_fraction={val_fraction} leaves no training items out of {num_items}")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(num_items, generator=generator)
    return order[num_val:].sort().values, order[:num_val].sort().values

"""Weights for sharing: a checkpoint's (EMA) weights as safetensors, with the run's resolved config inside.

Safetensors holds tensors and a str -> str header only, so loading cannot run code (unlike a pickle); the header
carries the config as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from diffusion.storage import checkpoint as checkpoint_lib
from diffusion.storage.atomic import atomic_write
from diffusion.storage.checkpoint import CheckpointError
from diffusion.storage.safe_load import check_safe_targets, load_checkpoint, read_verified

FORMAT = "diffusion-weights/1"
_HEADER_BYTES = 8  # a safetensors file starts with its JSON header's length, u64 little-endian


def export_weights(checkpoint: str | Path, out: str | Path, use_ema: bool = True) -> Path:
    """Write ``checkpoint``'s EMA (or raw, ``use_ema=False``) weights and its config to ``out``, atomically with a
    ``.sha256`` sidecar, as checkpoints are.
    """
    ckpt = load_checkpoint(checkpoint)
    state = ckpt["train_state"]
    return write_weights(checkpoint_lib.weights(ckpt, use_ema), ckpt.get("config") or {}, out,
                         kind="ema" if use_ema else "raw", epoch=state.get("epoch"), step=state.get("global_step"))


def write_weights(weights: dict[str, torch.Tensor], config: dict[str, Any], out: str | Path, kind: str,
                  epoch: int | None = None, step: int | None = None) -> Path:
    """Write ``weights`` (a state dict for ``config["model"]``) with the run ``config`` as an export; ``kind``
    says which weights they are (``ema``, ``raw``, ``posthoc std=0.05``). Atomic, with a ``.sha256`` sidecar."""
    # safetensors refuses tensors that share storage; clones own theirs.
    tensors = {name: tensor.detach().cpu().contiguous().clone() for name, tensor in weights.items()}
    metadata = {
        "format": FORMAT,
        "weights": kind,
        "epoch": "" if epoch is None else str(epoch),
        "global_step": "" if step is None else str(step),
        "config": json.dumps(config, sort_keys=True),
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(save_safetensors(tensors, metadata=metadata), out)
    return out


def load_exported(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict and the run config of an exported file (CheckpointError if damaged, foreign or unsafe)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"exported weights {path} do not exist")
    payload = read_verified(path)
    try:
        weights = load_safetensors(payload)
        metadata = _metadata(payload)
        config = json.loads(metadata["config"])
    except (SafetensorError, ValueError, KeyError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is damaged or not weights exported by task=export ({error})") from error
    if metadata.get("format") != FORMAT or not isinstance(config, dict):
        raise CheckpointError(f"{path} is not weights exported by task=export (format {metadata.get('format')!r})")
    check_safe_targets(config, path)
    return weights, config


def _metadata(payload: bytes) -> dict[str, str]:
    size = int.from_bytes(payload[:_HEADER_BYTES], "little")
    header = json.loads(payload[_HEADER_BYTES : _HEADER_BYTES + size])
    return header.get("__metadata__") or {}

"""Reading what this project wrote without trusting it: digests checked, no pickled code, no foreign targets."""

from __future__ import annotations

import hashlib
import io
import pickle
from pathlib import Path
from typing import Any

import torch

from diffusion.storage import checkpoint
from diffusion.storage.atomic import sidecar
from diffusion.storage.checkpoint import CheckpointError

SAFE_TARGET_PREFIX = "diffusion."


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely (:func:`read_safely`) and check that it is one of this project's (CheckpointError)."""
    state = read_safely(path, map_location)
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} is not a training checkpoint of this project")
    checkpoint.check_format(state, path)
    return state


def read_safely(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """A file this project wrote with ``torch.save``, verified against its sidecar and read with ``weights_only``:
    only tensors and plain containers, never pickled code (CheckpointError otherwise).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    payload = read_verified(path)
    try:
        state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"checkpoint {path} holds objects other than tensors and plain data and was refused "
            f"(weights_only load: {first_line})"
        ) from error
    except Exception as error:  # noqa: BLE001 - the restricted unpickler raises anything on foreign bytes
        raise CheckpointError(f"checkpoint {path} is damaged or not a checkpoint ({type(error).__name__})") from error
    return state


def read_verified(path: Path) -> bytes:
    """The bytes of ``path``, checked against its ``.sha256`` sidecar when it has one (CheckpointError if not equal)."""
    payload = path.read_bytes()
    digest_file = sidecar(path)
    if digest_file.is_file() and digest_file.read_text().strip() != hashlib.sha256(payload).hexdigest():
        raise CheckpointError(f"checkpoint {path} is damaged (its contents do not match {digest_file.name})")
    return payload


def check_safe_targets(config: Any, source: str | Path) -> None:
    """Refuse (CheckpointError naming the file and key) a config read from a file whose ``_target_`` would make
    ``instantiate`` call anything outside this package (``_target_: os.system`` runs code).
    """

    def visit(node: Any, key: str) -> None:
        if isinstance(node, dict):
            target = node.get("_target_")
            if target is not None and not (isinstance(target, str) and target.startswith(SAFE_TARGET_PREFIX)):
                raise CheckpointError(
                    f"{source}: {key + '.' if key else ''}_target_={target!r} is outside the "
                    f"'{SAFE_TARGET_PREFIX}' package and was refused (it could run code)"
                )
            for name, value in node.items():
                visit(value, f"{key}.{name}" if key else str(name))
        elif isinstance(node, list):
            for index, value in enumerate(node):
                visit(value, f"{key}[{index}]")

    visit(config, "")



"""``task=export``: a run's best EMA weights and its config as one ``weights.safetensors``, to share and sample."""

from __future__ import annotations

from diffusion.storage.export import export_weights
from diffusion.storage.file_manager import FileManager
from diffusion.tasks.components import RunSettings


def export(run: RunSettings) -> None:
    """Export ``run.source`` (a run directory: its best, else last checkpoint; or a checkpoint ``.pt``) into
    ``run.output_dir``."""
    source = run.source
    assert source is not None, "the app refuses task=export without run_dir"
    found = FileManager(source).best_or_last() if source.is_dir() else source
    path = export_weights(found, run.output_dir / "weights.safetensors")
    print(f"exported the EMA weights of {found} and its run config to {path}")
    print(f"sample from them with: python run.py task=sample run_dir={path}")

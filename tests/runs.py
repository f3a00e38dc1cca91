"""What the end-to-end tests share: the repository root, tiny run presets, and ways to run ``run.py``.

Imported by test modules (``from runs import ...``); fixtures live in ``conftest.py``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
TINY_DIGITS = [
    "trainer=fast",
    "trainer.precision=fp32",
    "model.base_channels=16",
    "model.num_res_blocks=1",
    "model.num_groups=4",
    "method.num_timesteps=50",
    "sampler.num_samples=8",
    "evaluator.num_samples=8",
]
TINY_MOONS = [
    "experiment=moons_mlp",
    "trainer.epochs=2",
    "trainer.progress=false",
    "data.num_samples=600",
    "model.hidden_dim=32",
    "model.num_layers=2",
    "method.num_timesteps=50",
    "sampler.num_samples=64",
    "evaluator.num_samples=64",
]

# A run of a second or two: one epoch of moons on a one-layer MLP with 20 noise levels (add the evaluator choice).
ONE_EPOCH_MOONS = [
    "experiment=moons_mlp",
    "trainer.epochs=1",
    "trainer.progress=false",
    "data.num_samples=200",
    "model.hidden_dim=16",
    "model.num_layers=1",
    "method.num_timesteps=20",
    "sampler.num_samples=16",
]


def compose_config(*overrides: str):
    """conf/'s ``config`` composed with ``overrides`` through Hydra's compose API (no run, nothing written)."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a ``run.py`` child: this checkout first on the path, one thread (the tests' runs are
    tiny, busy cores make multi-threaded torch crawl, and one thread gives the same float reductions in every
    process, so resumed runs can match bit for bit), user errors as one line."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "DIFFUSION_DEBUG": "0", **extra}


def run_py(cwd: Path, *overrides: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """``python run.py <overrides>`` in a child process."""
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *overrides], cwd=cwd, env=child_env(),
                          capture_output=True, text=True, timeout=timeout)


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"run.py failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def main_in_process(monkeypatch: pytest.MonkeyPatch, *overrides: str) -> int:
    """``python run.py <overrides>`` in this process (no interpreter start-up per case), on one thread; returns
    the exit status (0 when main returns)."""
    from diffusion.app.errors import guard_command_line

    monkeypatch.syspath_prepend(str(ROOT))
    import run

    monkeypatch.setattr(sys, "argv", ["run.py", *overrides])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with guard_command_line():  # what run.py's command line wraps around the Hydra entry point
            run.main()
    except SystemExit as stop:
        return 0 if stop.code is None else int(stop.code)
    finally:
        torch.set_num_threads(threads)
    return 0


def tree_digest(directory: Path) -> dict[str, str]:
    """sha256 of every file under ``directory``, by relative path (a new or removed file shows too)."""
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }

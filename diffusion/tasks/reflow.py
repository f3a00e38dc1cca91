"""Reflow (Liu et al. 2023, "Flow Straight and Fast", Alg. 1): draw (noise, sample) pairs with a trained flow's
ODE, then train a new flow on that fixed coupling, starting from the teacher's weights; repeated, the paths
straighten and fewer Euler steps suffice.

Pairs live in ``<run>/reflow_pairs/``: ``pairs.json`` (the settings) and atomically written chunks
``pairs_<first index>.npz`` with ``.sha256`` sidecars. Pair i's noise is the first draw of sample i's own stream,
so an interrupted generation resumes at the first missing chunk with the same result (``resume=auto``).
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from diffusion.data.pairs import PairedData
from diffusion.loggers import NullLogger
from diffusion.methods.base import BaseMethod
from diffusion.runtime.checks import ConfigError, check_int
from diffusion.runtime.distributed import DistributedContext
from diffusion.sampling.noise import SampleNoise
from diffusion.sampling.sampler import Sampler
from diffusion.storage.atomic import atomic_write, atomic_write_text, sidecar, written_intact
from diffusion.storage.resume import ResumePoint, shared_resume
from diffusion.tasks.exits import holding_run, stopped_outside_the_loop
from diffusion.tasks.components import Components, RunSettings
from diffusion.tasks.run_files import remove_if_empty
from diffusion.tasks.train import check_monitor, prepare_training, run_training

PAIRS_DIR = "reflow_pairs"
ODE_SOLVERS = ("euler", "heun", "midpoint", "dopri5")  # deterministic: a pair is a point of the ODE's coupling


class Pairs(NamedTuple):
    noise: torch.Tensor  # (N, ...) the start of each trajectory, n ~ N(0, I)
    samples: torch.Tensor  # (N, ...) where the teacher's ODE carried it
    labels: torch.Tensor | None  # (N,) the class it was drawn for (a conditional teacher)


def reflow(parts: Components, run: RunSettings, dist: DistributedContext, num_pairs: int, chunk_size: int) -> float:
    """``task=reflow run_dir=<flow run>``: the teacher's ``num_pairs`` ODE pairs in ``reflow_pairs/``, then
    ``parts.model`` (from the teacher's best EMA weights) trained on them by :class:`PairedFlowMatching`, sampled and
    scored. Returns the best monitored value. Every check runs before anything is written.
    """
    assert run.source is not None, "the app refuses task=reflow without run_dir"
    num_pairs = check_int(num_pairs, "reflow.num_pairs", minimum=1)
    chunk_size = check_int(chunk_size, "reflow.chunk_size", minimum=1)
    resume = shared_resume(dist, run.resume, run.output_dir)
    if resume.run_dir != run.output_dir:
        remove_if_empty(run.output_dir)  # Hydra made it for this job; the run lives elsewhere
    teacher = parts.make_sampler(copy.deepcopy(parts.model), run.source, dist)
    teacher.load_checkpoint(parts.make_file_manager(run.source), "best")
    check_teacher(parts.method, teacher.solver, run.source)
    for path in sorted((resume.run_dir / PAIRS_DIR).glob("pairs_*.npz")):
        _intact(path)  # a damaged chunk is refused before anything is written
    _check_training(parts, run, dist, resume, num_pairs)
    with holding_run(resume.run_dir, dist.rank, stopped_outside_the_loop(resume.run_dir)):
        pairs = generate_pairs(teacher, resume.run_dir, num_pairs, chunk_size)
        if resume.state is None:
            parts.model.load_state_dict(teacher.model.state_dict())
        data = paired_data(pairs, parts.data.kind, parts.data.num_classes, split_seed=run.seed)
        paired = dataclasses.replace(parts, training_data=data)
        return run_training(paired, run, dist, prepare_training(paired, run, dist, resume, distill=False))


def _check_training(parts: Components, run: RunSettings, dist: DistributedContext, resume: ResumePoint,
                    num_pairs: int) -> None:
    """The trainer's settings checked on stand-in pairs of the real count (zeros), before any pair is drawn.

    Raises:
        ConfigError: naming the ``trainer.*`` key of a bad setting, or ``trainer.monitor``.
    """
    zeros = torch.zeros(1, *parts.data.sample_shape).expand(num_pairs, *parts.data.sample_shape)
    labels = torch.zeros(num_pairs, dtype=torch.long) if parts.data.num_classes else None
    stand_in = paired_data(Pairs(zeros, zeros, labels), parts.data.kind, parts.data.num_classes, run.seed)
    trainer = parts.make_trainer(model=copy.deepcopy(parts.model), method=parts.method, data=stand_in,
                                 file_manager=parts.make_file_manager(resume.run_dir), logger=NullLogger(),
                                 seed=run.seed, run_config=run.config, distributed=dist, max_steps=run.max_steps)
    check_monitor(trainer.monitor, parts.evaluator)


def check_teacher(method: BaseMethod, solver: str, run_dir: str | Path) -> None:
    """A reflow needs a flow teacher sampled by a deterministic ODE solver.

    Raises:
        ConfigError: naming ``run_dir`` for a teacher that is not a flow, ``sampler.solver`` for a stochastic one.
    """
    if "time" not in method.grids:
        raise ConfigError(f"run_dir={run_dir}: task=reflow needs a flow run (method=flow_matching), not "
                          f"method {method.name}")
    if solver not in ODE_SOLVERS:
        raise ConfigError(f"sampler.solver={solver}: reflow pairs come from a deterministic ODE; use one of "
                          f"{', '.join(ODE_SOLVERS)}")


def generate_pairs(sampler: Sampler, run_dir: Path, num_pairs: int, chunk_size: int = 1000,
                   log: Any = print) -> Pairs:
    """The teacher's ``num_pairs`` pairs in ``run_dir/reflow_pairs`` (chunks already there verified and kept), all
    loaded; ``sampler`` holds the teacher's weights and ODE solver.

    Raises:
        ConfigError: naming ``reflow.num_pairs`` or ``reflow.chunk_size`` (< 1), a damaged chunk file, or a
            directory holding pairs of other settings.
    """
    num_pairs = check_int(num_pairs, "reflow.num_pairs", minimum=1)
    chunk_size = check_int(chunk_size, "reflow.chunk_size", minimum=1)
    directory = run_dir / PAIRS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    _check_manifest(directory, {"num_pairs": num_pairs, "chunk_size": chunk_size, "seed": sampler.seed,
                                "sampler": sampler.name, "steps": len(sampler.grid().labels)})
    for start in range(0, num_pairs, chunk_size):
        path = directory / f"pairs_{start:08d}.npz"
        if _intact(path):
            continue
        count = min(chunk_size, num_pairs - start)
        result = sampler.sample(count, first_index=start)
        noise = SampleNoise(sampler.seed, range(start, start + count), sampler.sample_shape)()
        arrays = {"noise": noise.numpy(), "samples": result.samples.numpy()}
        if result.labels is not None:
            arrays["labels"] = result.labels.numpy()
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write(buffer.getvalue(), path)
        log(f"reflow pairs {start + count}/{num_pairs} ({sampler.name}, {result.nfe} NFE)")
    return load_pairs(run_dir, num_pairs, chunk_size)


def load_pairs(run_dir: Path, num_pairs: int, chunk_size: int) -> Pairs:
    """Every chunk of ``run_dir/reflow_pairs``, verified against its sidecar, concatenated in index order.

    Raises:
        ConfigError: naming a chunk file that is missing or damaged.
    """
    parts: list[dict[str, np.ndarray]] = []
    for start in range(0, num_pairs, chunk_size):
        path = run_dir / PAIRS_DIR / f"pairs_{start:08d}.npz"
        if not _intact(path):
            raise ConfigError(f"{path} is missing or damaged (its sha256 differs from {sidecar(path).name}); "
                              "delete it and rerun task=reflow to draw it again")
        with np.load(path, allow_pickle=False) as chunk:
            parts.append({key: chunk[key] for key in chunk.files})
    labels = [torch.from_numpy(part["labels"]) for part in parts if "labels" in part]
    return Pairs(torch.from_numpy(np.concatenate([part["noise"] for part in parts])),
                 torch.from_numpy(np.concatenate([part["samples"] for part in parts])),
                 torch.cat(labels) if labels else None)


def paired_data(pairs: Pairs, kind: str, num_classes: int, split_seed: int = 0) -> PairedData:
    """The pairs as the training data of the reflowed flow (:class:`PairedData`)."""
    return PairedData(pairs.samples, pairs.noise, pairs.labels, kind,  # type: ignore[arg-type]
                      num_classes, split_seed=split_seed)


def _intact(path: Path) -> bool:
    """``path`` and its sidecar exist with equal digests (False: not written yet); a damaged file is one line."""
    return written_intact(path, "delete it and rerun task=reflow to draw it again")


def _check_manifest(directory: Path, settings: dict[str, Any]) -> None:
    """Write ``pairs.json`` on the first generation; later ones must ask for the same pairs.

    Raises:
        ConfigError: naming the file when it records other settings.
    """
    manifest = directory / "pairs.json"
    if manifest.exists():
        recorded = json.loads(manifest.read_text())
        if recorded != settings:
            raise ConfigError(f"{manifest} holds pairs of other settings ({recorded}, asked {settings}); use a new "
                              "hydra.run.dir or the same reflow.* and sampler.* settings")
        return
    atomic_write_text(manifest, json.dumps(settings, indent=2, sort_keys=True))

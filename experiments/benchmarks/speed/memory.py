"""Peak resident memory of the default run, and whether it grows from epoch to epoch; and the peak of a run on a
CIFAR-10-sized synthetic set (image sets live as uint8 and are converted per batch).

Runs ``python run.py`` in a child process and, while it runs, reads the child's resident set size
(``VmRSS`` in ``/proc/<pid>/status``) each time a new epoch record appears in its ``metrics.jsonl``, and its
high-water mark (``VmHWM``) every poll, which covers the sampling at the end of the run.

Not ``ru_maxrss``: the kernel carries the parent's high-water mark into a spawned child (the child starts as
a copy of the benchmark process, which by then holds several models), so that figure would be the benchmark's
own peak. ``VmHWM`` belongs to the address space ``run.py`` got at ``exec``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from experiments.lib import ROOT, LOG_TAIL_CHARS, run_py_command, run_py_env, shown_command

POLL_SECONDS = 0.02


@dataclass
class MemoryFigures:
    command: str
    peak_mib: float
    rss_after_epoch_mib: list[float]  # index k: after epoch k + 1
    seconds: float

    @property
    def growth(self) -> float:
        """Relative RSS change from after epoch 2 to after the last epoch."""
        after_second, after_last = self.rss_after_epoch_mib[1], self.rss_after_epoch_mib[-1]
        return after_last / after_second - 1.0


def default_run_arguments(epochs: int, overrides: Sequence[str]) -> list[str]:
    return [f"trainer.epochs={epochs}", "evaluator=none", "sampler.num_samples=16", *overrides]


def measure_default_run(epochs: int, overrides: Sequence[str] = (), threads: int | None = None) -> MemoryFigures:
    """Run the default training in a child process; RSS after every epoch and the child's peak RSS.

    Raises:
        RuntimeError: the run failed (its stderr is in the message) or logged too few epochs.
    """
    if epochs < 3:
        raise ValueError(f"need at least 3 epochs to compare epoch 2 with a later one, got {epochs}")
    arguments = default_run_arguments(epochs, overrides)
    with tempfile.TemporaryDirectory(prefix="benchmark_memory_") as tmp:
        start = time.perf_counter()
        rss, peak = _watched_run(arguments, Path(tmp), threads, min_epochs=epochs)
        seconds = time.perf_counter() - start
    shown = (f"OMP_NUM_THREADS={threads} " if threads else "") + shown_command(arguments)
    return MemoryFigures(shown, peak, rss[:epochs], seconds)


CIFAR_SHAPE = (3, 32, 32)
CIFAR_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")  # 10,000 images each in the real set


@dataclass
class CifarMemoryFigures:
    command: str
    images: int  # in the full synthetic set (train + test files)
    peak_mib: float  # the run on the full set
    baseline_peak_mib: float  # the same run on a set of ``6 x baseline_images``
    baseline_images: int  # per file

    @property
    def extra_images(self) -> int:
        return self.images - 6 * self.baseline_images

    @property
    def uint8_mib(self) -> float:
        """The extra images' size as uint8."""
        return self.extra_images * math.prod(CIFAR_SHAPE) / 2**20

    @property
    def data_mib(self) -> float:
        """What the images add to the peak: the full set's run against the small set's."""
        return self.peak_mib - self.baseline_peak_mib


def write_synthetic_cifar(root: Path, per_file: int, seed: int = 0) -> int:
    """CIFAR-10's binary layout (``cifar-10-batches-bin/*.bin``: a label byte and 3,072 pixel bytes per image) with
    ``per_file`` random images in each of its six files; returns the number of images."""
    import numpy as np

    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for name in CIFAR_FILES:
        records = rng.integers(0, 256, (per_file, 1 + math.prod(CIFAR_SHAPE)), dtype=np.uint8)
        records[:, 0] %= 10  # the label byte
        (folder / f"{name}.bin").write_bytes(records.tobytes())
    return per_file * len(CIFAR_FILES)


def cifar_run_arguments(root: Path, steps: int, overrides: Sequence[str]) -> list[str]:
    """A few steps of a small U-Net on ``data=cifar10`` (flips on): the network is small so the images dominate."""
    return ["data=cifar10", f"data.root={root}", "data.random_flip=true", "model.base_channels=16",
            "model.channel_mults=[1,2]", "model.attention_resolutions=[]", "model.num_groups=8",
            f"trainer.max_steps={steps}", "trainer.batch_size=128", "evaluator=none", "method=ddim",
            "sampler.steps=2", "sampler.num_samples=16", "trainer.progress=false", *overrides]


def measure_cifar_sized(per_file: int = 10_000, baseline_per_file: int | None = None, steps: int = 5,
                        overrides: Sequence[str] = (), threads: int | None = None) -> CifarMemoryFigures:
    """Peak RSS of ``steps`` training steps on a synthetic CIFAR-10 of ``6 x per_file`` images (the real set's size
    by default), and of the same run on ``6 x baseline_per_file`` images: the difference is what the images cost.
    The baseline (default ``min(1000, per_file // 2)`` per file) keeps at least one full 512-image validation chunk,
    so both runs peak with the same activations and the difference is the data's.

    Raises:
        RuntimeError: a run failed (its stderr is in the message).
    """
    baseline_per_file = baseline_per_file or min(1000, per_file // 2)
    peaks, sizes = [], []
    with tempfile.TemporaryDirectory(prefix="benchmark_cifar_") as tmp:
        for count in (per_file, baseline_per_file):
            root = Path(tmp) / f"cifar_{count}"
            sizes.append(write_synthetic_cifar(root, count))
            peaks.append(_watched_run(cifar_run_arguments(root, steps, overrides), root, threads)[1])
    shown = shown_command(cifar_run_arguments(Path("<synthetic CIFAR-10>"), steps, overrides))
    return CifarMemoryFigures(shown, sizes[0], peaks[0], peaks[1], baseline_per_file)


def _watched_run(arguments: Sequence[str], folder: Path, threads: int | None,
                 min_epochs: int = 0) -> tuple[list[float], float]:
    """``python run.py <arguments>`` in a child process, its run directory and stderr under ``folder``; its RSS
    after each epoch and its peak RSS (MiB).

    Raises:
        RuntimeError: it exited non-zero or logged fewer than ``min_epochs`` epochs (its stderr in the message).
    """
    env = dict(run_py_env(), **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    run_dir, stderr_path = folder / "run", folder / "stderr.txt"
    with open(stderr_path, "wb") as stderr:
        child = subprocess.Popen(run_py_command([*arguments, f"hydra.run.dir={run_dir}"]), cwd=ROOT, env=env,
                                 stdout=subprocess.DEVNULL, stderr=stderr)
        rss, peak, status = _watch(child.pid, run_dir / "metrics.jsonl")
    code = os.waitstatus_to_exitcode(status)  # reaped by _watch's waitpid
    if code != 0 or len(rss) < min_epochs:
        tail = stderr_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        raise RuntimeError(f"{shown_command(arguments)} exited {code} after {len(rss)} epochs:\n{tail}")
    return rss, peak


def _watch(pid: int, metrics: Path) -> tuple[list[float], float, int]:
    """Until ``pid`` exits: its VmRSS (MiB) each time ``metrics`` gains an epoch record, its last VmHWM (MiB)
    and its wait status."""
    rss_after_epoch: list[float] = []
    peak = math.nan
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return rss_after_epoch, peak, status
        peak = _proc_status_mib(pid, "VmHWM", default=peak)
        logged = _epochs_logged(metrics)
        if logged > len(rss_after_epoch):
            reading = _proc_status_mib(pid, "VmRSS")
            rss_after_epoch.extend([reading] * (logged - len(rss_after_epoch)))  # > 1 only if a poll was missed
        time.sleep(POLL_SECONDS)


def _epochs_logged(metrics: Path) -> int:
    """Epoch records (those with an ``epoch`` key) among the complete lines of ``metrics.jsonl``."""
    if not metrics.is_file():
        return 0
    complete_lines = metrics.read_text().split("\n")[:-1]  # the last piece may still be being written
    return sum(1 for line in complete_lines if line.strip() and "epoch" in json.loads(line))


def _proc_status_mib(pid: int, field: str, default: float = math.nan) -> float:
    """``field`` (``VmRSS``, ``VmHWM``) of ``pid`` in MiB; ``default`` once the process has exited."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return default
    for line in status.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    return default  # a zombie has no memory lines

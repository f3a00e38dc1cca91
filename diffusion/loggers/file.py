"""Logs to files in the run directory and to the console.

``train.log`` and ``metrics.jsonl`` grow by appended lines: a failed write (full disk, quota, I/O error) can cut
at most the line being written (readers skip a cut line) and raises :class:`~diffusion.storage.file_manager.SaveError`
naming the file; whole files (``loss_curve.png``) are replaced at once.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from diffusion.storage.file_manager import SaveError
from diffusion.loggers.base import BaseLogger


class FileLogger(BaseLogger):
    """Writes ``train.log`` (timestamped, human-readable), ``metrics.jsonl`` (one JSON object per ``log`` of a
    dict) and, at the end of training, ``loss_curve.png``; echoes lines to the console.

    Args:
        run_dir: the run directory (created if missing).
        console: also print each line to stdout.
        append: keep existing files (a resumed run continues its log).
    """

    def __init__(self, run_dir: str | Path, console: bool = True, append: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.console = console
        self._mode = "a" if append else "w"
        # Files open on first write, so that building (and validating) the logger writes nothing.
        self._text: TextIO | None = None
        self._metrics: TextIO | None = None
        self._closed = False
        self._start = time.time()

    def _open(self) -> None:
        if self._text is None and not self._closed:
            with _naming(self.run_dir):
                self.run_dir.mkdir(parents=True, exist_ok=True)
            with _naming(self.run_dir / "train.log"):
                self._text = open(self.run_dir / "train.log", self._mode, encoding="utf-8")
            with _naming(self.run_dir / "metrics.jsonl"):
                self._metrics = open(self.run_dir / "metrics.jsonl", self._mode, encoding="utf-8")

    def log(self, info: dict[str, Any] | str, step: int | None = None) -> None:
        if isinstance(info, str):
            self._write_line(info)
            return
        self._open()
        record = {"step": step, "time": round(time.time() - self._start, 3), **_plain(info)}
        if self._metrics is not None:
            with _naming(self.run_dir / "metrics.jsonl"):
                self._metrics.write(json.dumps(record) + "\n")
                self._metrics.flush()
        self._write_line(metrics_line(info, step))

    def log_hyperparams(self, params: dict[str, Any]) -> None:
        self._open()
        if self._text is not None:
            with _naming(self.run_dir / "train.log"):
                self._text.write(f"[{_now()}] hyperparameters: {json.dumps(_plain(params), default=str)}\n")
                self._text.flush()

    def log_loss_curve(self, train: Sequence[float], val: Sequence[float]) -> None:
        from diffusion.storage.images import save_loss_curve

        if train:
            with _naming(self.run_dir / "loss_curve.png"):
                path = save_loss_curve(list(train), list(val), self.run_dir / "loss_curve.png")
            self._write_line(f"loss curve: {path}")

    def close(self) -> None:
        for handle in (self._text, self._metrics):
            if handle is not None:
                handle.close()
        self._text = self._metrics = None
        self._closed = True

    def _write_line(self, line: str) -> None:
        self._open()
        if self._text is not None:
            with _naming(self.run_dir / "train.log"):
                self._text.write(f"[{_now()}] {line}\n")
                self._text.flush()
        if self.console:
            print(line, file=sys.stdout, flush=True)


@contextmanager
def _naming(path: Path) -> Iterator[None]:
    """Turn a failed write into one line naming the file (a bare ``OSError`` from ``write`` names none)."""
    try:
        yield
    except SaveError:
        raise
    except OSError as error:
        raise SaveError.of(path, error) from error


def _now() -> str:
    return datetime.now().strftime("%Y-%m-%d %H:%M:%S")


def metrics_line(info: dict[str, Any], step: int | None = None) -> str:
    """The console line of a dict of metrics: ``step 40: train/loss=0.1234  lr=0.0003``."""
    prefix = f"step {step}: " if step is not None else ""
    return prefix + "  ".join(f"{k}={_format(v)}" for k, v in info.items())


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def _plain(info: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe copy: tensors and NumPy scalars become Python numbers."""
    out: dict[str, Any] = {}
    for key, value in info.items():
        if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
            value = value.item()
        out[key] = value
    return out

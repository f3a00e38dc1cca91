"""Logs to files in the run directory and to the console.

``train.log`` and ``metrics.jsonl`` grow by appended lines, so a failed write cuts at most one line (readers skip
it) and raises :class:`~diffusion.storage.atomic.SaveError`; whole files are replaced at once.
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

from diffusion.loggers.base import BaseLogger
from diffusion.storage.atomic import SaveError

METRICS_FILE = "metrics.jsonl"


class MetricsFile(BaseLogger):
    """``metrics.jsonl``: one JSON object per ``log`` of a dict, with ``step`` and ``time`` (seconds since the
    logger started). The one file every run writes, whatever its logger: what the sweep report reads."""

    writes_metrics_file = True

    def __init__(self, run_dir: str | Path, append: bool = True) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        self._mode = "a" if append else "w"
        self._handle: TextIO | None = None  # opened on first write: building the logger writes nothing
        self._closed = False
        self._start = time.time()

    def log(self, info: dict[str, Any] | str, step: int | None = None) -> None:
        if isinstance(info, str) or self._closed:
            return
        record = {"step": step, "time": round(time.time() - self._start, 3), **plain(info)}
        with naming(self.path):
            if self._handle is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._handle = open(self.path, self._mode, encoding="utf-8")
            self._handle.write(json.dumps(record) + "\n")
            self._handle.flush()

    def log_hyperparams(self, params: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
        self._handle = None
        self._closed = True


class FileLogger(BaseLogger):
    """``train.log`` (timestamped, human-readable), ``metrics.jsonl`` and, at the end of training,
    ``loss_curve.png``; echoes lines to the console. ``append``: a resumed run continues its files.
    """

    writes_metrics_file = True

    def __init__(self, run_dir: str | Path, console: bool = True, append: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.console = console
        self._mode = "a" if append else "w"
        self._metrics = MetricsFile(run_dir, append)
        self._text: TextIO | None = None  # opened on first write, as the metrics file
        self._closed = False

    def log(self, info: dict[str, Any] | str, step: int | None = None) -> None:
        if not isinstance(info, str):
            self._metrics.log(info, step)
            info = metrics_line(info, step)
        self._write_line(info)

    def log_hyperparams(self, params: dict[str, Any]) -> None:
        self._write(f"[{_now()}] hyperparameters: {json.dumps(plain(params), default=str)}\n")

    def log_loss_curve(self, train: Sequence[float], val: Sequence[float]) -> None:
        from diffusion.storage.images import save_loss_curve

        if train:
            with naming(self.run_dir / "loss_curve.png"):
                path = save_loss_curve(list(train), list(val), self.run_dir / "loss_curve.png")
            self._write_line(f"loss curve: {path}")

    def close(self) -> None:
        self._metrics.close()
        if self._text is not None:
            self._text.close()
        self._text = None
        self._closed = True

    def _write_line(self, line: str) -> None:
        self._write(f"[{_now()}] {line}\n")
        if self.console:
            print(line, file=sys.stdout, flush=True)

    def _write(self, text: str) -> None:
        if self._closed:
            return
        path = self.run_dir / "train.log"
        with naming(path):
            if self._text is None:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                self._text = open(path, self._mode, encoding="utf-8")
            self._text.write(text)
            self._text.flush()


@contextmanager
def naming(path: Path) -> Iterator[None]:
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


def plain(info: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe copy: tensors and NumPy scalars become Python numbers."""
    out: dict[str, Any] = {}
    for key, value in info.items():
        if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
            value = value.item()
        out[key] = value
    return out

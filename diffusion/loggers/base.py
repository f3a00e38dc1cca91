"""The logging interface every logger implements, and a fan-out to several loggers."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class BaseLogger(ABC):
    """Receives metrics (a dict, at the optimizer ``step`` when known), messages, hyperparameters and pictures;
    ``close()`` always runs (use as a context).
    """

    writes_metrics_file = False  # whether it writes metrics.jsonl; open_logger adds a writer when none does

    @abstractmethod
    def log(self, info: dict[str, Any] | str, step: int | None = None) -> None: ...

    @abstractmethod
    def log_hyperparams(self, params: dict[str, Any]) -> None: ...

    def log_image(self, key: str, path: str | Path, step: int | None = None) -> None:
        """A picture the run wrote (sample grid, loss curve); file loggers already have it on disk."""

    def log_summary(self, metrics: dict[str, Any]) -> None:
        """Final metrics of the run."""

    def log_loss_curve(self, train: Sequence[float], val: Sequence[float]) -> None:
        """Called once at the end of training with the full per-epoch histories."""

    def log_curve(self, key: str, x_name: str, curves: dict[str, list[tuple[float, float]]]) -> None:
        """Named curves of ``(x, y)`` points, e.g. each score against training images seen; file loggers have the
        picture on disk already, a tracker may draw them as charts."""

    def close(self) -> None:
        """Flush and release resources; idempotent."""

    @property
    def run_id(self) -> str | None:
        """The id of the tracker run (W&B) that a resumed training continues; None for local-only loggers."""
        return None

    def __enter__(self) -> BaseLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        """Closes; a logger that records failures (W&B) overrides this to read the exception."""
        self.close()


class NullLogger(BaseLogger):
    """Logs nothing (data-parallel ranks other than 0)."""

    def log(self, info: dict[str, Any] | str, step: int | None = None) -> None:
        pass

    def log_hyperparams(self, params: dict[str, Any]) -> None:
        pass


class LoggerCollection(BaseLogger):
    """Forwards every call to each logger (``logger=[file,wandb]``)."""

    def __init__(self, loggers: Sequence[BaseLogger]) -> None:
        self.loggers = list(loggers)

    @property
    def writes_metrics_file(self) -> bool:  # type: ignore[override]
        return any(logger.writes_metrics_file for logger in self.loggers)

    def log(self, info: dict[str, Any] | str, step: int | None = None) -> None:
        for logger in self.loggers:
            logger.log(info, step)

    def log_hyperparams(self, params: dict[str, Any]) -> None:
        for logger in self.loggers:
            logger.log_hyperparams(params)

    def log_image(self, key: str, path: str | Path, step: int | None = None) -> None:
        for logger in self.loggers:
            logger.log_image(key, path, step)

    def log_summary(self, metrics: dict[str, Any]) -> None:
        for logger in self.loggers:
            logger.log_summary(metrics)

    def log_loss_curve(self, train: Sequence[float], val: Sequence[float]) -> None:
        for logger in self.loggers:
            logger.log_loss_curve(train, val)

    def log_curve(self, key: str, x_name: str, curves: dict[str, list[tuple[float, float]]]) -> None:
        for logger in self.loggers:
            logger.log_curve(key, x_name, curves)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()

    @property
    def run_id(self) -> str | None:
        return next((i for i in (logger.run_id for logger in self.loggers) if i is not None), None)

    def __exit__(self, *exc: object) -> None:
        """Each logger exits with the exception, so a W&B run of a failed job is marked failed."""
        for logger in self.loggers:
            logger.__exit__(*exc)

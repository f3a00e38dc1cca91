"""Open loggers from factories (``_partial_: true`` configs) with the run-time context the entry point knows.

A factory receives the context arguments it accepts (``run_dir``; for W&B ``name``, ``group``, ``config``,
``run_id``) that its config leaves unset or null.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from diffusion.loggers.base import BaseLogger, LoggerCollection
from diffusion.loggers.file import MetricsFile

LoggerFactory = Callable[..., BaseLogger]


def open_logger(factory: LoggerFactory, run_dir: str | Path, **context: Any) -> BaseLogger:
    """The run's logger: ``factory`` opened with ``run_dir`` and the ``context`` it accepts, plus a
    :class:`MetricsFile` when it writes no ``metrics.jsonl`` itself, so that every run has one to report from."""
    logger = _open(factory, run_dir, context)
    return logger if logger.writes_metrics_file else LoggerCollection([MetricsFile(run_dir), logger])


def collect_loggers(
    run_dir: str | Path, loggers: Mapping[str, LoggerFactory] | Sequence[LoggerFactory], **context: Any
) -> LoggerCollection:
    """Several logger factories opened as one (the target of ``logger=both``)."""
    factories = list(loggers.values()) if isinstance(loggers, Mapping) else list(loggers)
    return LoggerCollection([_open(factory, run_dir, context) for factory in factories])


def _open(factory: LoggerFactory, run_dir: str | Path, context: Mapping[str, Any]) -> BaseLogger:
    return factory(run_dir=run_dir, **accepted_context(factory, context))


def accepted_context(factory: Callable[..., Any], context: Mapping[str, Any]) -> dict[str, Any]:
    """The ``context`` entries ``factory`` has a parameter for (all of them if it takes ``**kwargs``), minus
    those a ``functools.partial`` already binds to something other than None."""
    bound = factory.keywords if isinstance(factory, functools.partial) else {}
    params = inspect.signature(factory).parameters.values()
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    names = {p.name for p in params}
    return {
        key: value
        for key, value in context.items()
        if (takes_any or key in names) and bound.get(key) is None
    }

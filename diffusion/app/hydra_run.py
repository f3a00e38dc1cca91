"""Hydra's view of this job (output directory, overrides, chosen options, launcher), read once from the
``HydraConfig`` singleton into a plain :class:`HydraRun`, so everything below stays testable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class HydraRun:
    """One job of ``run.py``: where Hydra put it and what its command line chose."""

    output_dir: Path
    overrides: tuple[str, ...] = ()  # this job's task overrides, as typed (``method=ddim``, ``trainer.lr=1e-3``)
    choices: dict[str, str | None] = field(default_factory=dict)  # group -> option (``data`` -> ``digits``)
    launcher: dict[str, Any] = field(default_factory=dict)  # ``hydra.launcher`` (n_jobs: the thread budget)
    sweep_dir: Path | None = None  # a multirun's sweep directory; None for a single run

    @property
    def keys(self) -> set[str]:
        """The keys and groups this command line overrides (``method=ddim`` -> ``method``)."""
        return {override.split("=")[0].lstrip("+~") for override in self.overrides}

    @classmethod
    def read(cls) -> HydraRun:
        """The running job's view; the only place that reads ``HydraConfig``."""
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
        from omegaconf import OmegaConf

        hydra_cfg = HydraConfig.get()
        multirun = hydra_cfg.mode == RunMode.MULTIRUN
        return cls(
            output_dir=Path(hydra_cfg.runtime.output_dir),
            overrides=tuple(hydra_cfg.overrides.task),
            choices=dict(hydra_cfg.runtime.choices),
            launcher=OmegaConf.to_container(hydra_cfg.launcher, resolve=True),  # type: ignore[arg-type]
            sweep_dir=Path(hydra_cfg.sweep.dir) if multirun else None,
        )


_current: HydraRun | None = None


def start_job(run: HydraRun) -> HydraRun:
    """Make ``run`` this process's current job (a multirun's jobs follow each other in one process)."""
    global _current
    _current = run
    return run


def current_job() -> HydraRun:
    """The job :func:`start_job` began (read from Hydra if none was started, e.g. a test composing its own)."""
    return _current if _current is not None else start_job(HydraRun.read())

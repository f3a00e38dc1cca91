from diffusion.loggers.base import BaseLogger, LoggerCollection, NullLogger
from diffusion.loggers.build import collect_loggers, open_logger
from diffusion.loggers.file import FileLogger, MetricsFile
from diffusion.loggers.naming import (
    VAL_LOSS,
    flatten_config,
    is_val_loss,
    logged_key,
    run_name_from_overrides,
    sweep_group,
)
from diffusion.loggers.wandb import WandbLogger  # imports wandb itself only when a run is built

__all__ = [
    "VAL_LOSS",
    "BaseLogger",
    "FileLogger",
    "LoggerCollection",
    "MetricsFile",
    "NullLogger",
    "WandbLogger",
    "collect_loggers",
    "flatten_config",
    "is_val_loss",
    "logged_key",
    "open_logger",
    "run_name_from_overrides",
    "sweep_group",
]

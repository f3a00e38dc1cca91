from diffusion.loggers.base import BaseLogger, LoggerCollection, NullLogger
from diffusion.loggers.build import collect_loggers, open_logger
from diffusion.loggers.file import FileLogger
from diffusion.loggers.naming import flatten_config, run_name_from_overrides, sweep_group
from diffusion.loggers.wandb import WandbLogger  # imports wandb itself only when a run is built

__all__ = [
    "BaseLogger",
    "FileLogger",
    "LoggerCollection",
    "NullLogger",
    "WandbLogger",
    "collect_loggers",
    "flatten_config",
    "open_logger",
    "run_name_from_overrides",
    "sweep_group",
]

from diffusion.loggers.base import BaseLogger, LoggerCollection
from diffusion.loggers.file import FileLogger

__all__ = ["BaseLogger", "FileLogger", "LoggerCollection"]

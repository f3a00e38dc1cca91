"""The Hydra adapter: the one package under ``diffusion/`` that knows Hydra and OmegaConf.
``run.py`` -> :func:`run_job` (``jobs.py``) -> :func:`build` (``build.py``) -> a task of :mod:`diffusion.tasks`.
"""

from diffusion.app.build import build
from diffusion.app.errors import guard_command_line, guard_user_errors
from diffusion.app.hydra_run import HydraRun
from diffusion.app.jobs import command_line, run_job

__all__ = ["build", "command_line", "guard_command_line", "guard_user_errors", "HydraRun", "run_job"]

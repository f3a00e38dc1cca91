"""The Hydra adapter: the one package under ``diffusion/`` that knows Hydra and OmegaConf objects.

``run.py`` hands each job to :func:`run_job` (``jobs.py``): Hydra's view of the job is read once
(``hydra_run.py``), every component is built by :func:`build` (``build.py``, also what experiments and tests
call), and the task runs from :mod:`diffusion.tasks`. User errors become one line and exit 2 (``errors.py``).
"""

from diffusion.app.build import build
from diffusion.app.errors import guard_command_line, guard_user_errors
from diffusion.app.hydra_run import HydraRun
from diffusion.app.jobs import command_line, run_job

__all__ = ["build", "command_line", "guard_command_line", "guard_user_errors", "HydraRun", "run_job"]

"""What ``run.py`` needs besides instantiation: user-error reporting, reading Hydra's view of the command line and
of earlier runs, cross-component checks, and the run directory's description files.

The one place under ``diffusion/`` allowed to know about Hydra/OmegaConf objects.
"""

from diffusion.app.components import Components, check_compatible, check_monitor
from diffusion.app.distill_config import DistillRun, check_distill_option, distill_run_config
from diffusion.app.errors import guard_command_line, guard_user_errors, remove_if_empty
from diffusion.app.run_config import (
    load_guide_model,
    load_source_config,
    open_run_logger,
    require_run_dir,
    sampling_method_config,
    search_hooks,
)
from diffusion.app.run_files import print_config_tree, print_run_files, save_run_config

__all__ = [
    "Components",
    "check_compatible",
    "check_distill_option",
    "check_monitor",
    "DistillRun",
    "distill_run_config",
    "guard_command_line",
    "guard_user_errors",
    "remove_if_empty",
    "load_guide_model",
    "load_source_config",
    "open_run_logger",
    "print_config_tree",
    "print_run_files",
    "require_run_dir",
    "sampling_method_config",
    "save_run_config",
    "search_hooks",
]

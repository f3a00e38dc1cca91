"""What ``run.py`` needs besides instantiation: user-error reporting and the run directory's files.

The one place under ``diffusion/`` allowed to know about Hydra/OmegaConf objects.
"""

from diffusion.cli.components import Components, check_compatible
from diffusion.cli.errors import guard_user_errors
from diffusion.cli.run_files import print_config_tree, print_run_files, save_run_config

__all__ = ["Components", "check_compatible", "guard_user_errors", "print_config_tree", "print_run_files", "save_run_config"]

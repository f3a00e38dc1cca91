"""Entry point: compose the experiment with Hydra and run its task (diffusion.app.run_job).

    python run.py                                     # train on bundled digits, sample, score
    python run.py method=ddim schedule=cosine         # switch components
    python run.py -m trainer.lr=1e-4,3e-4             # a sweep: one run directory per job
    python run.py task=sample run_dir=outputs/...     # sample from an earlier run's best checkpoint
    python run.py task=evaluate run_dir=outputs/...   # score an earlier run
    python run.py task=distill run_dir=outputs/... distill=progressive   # a few-step student of that run
    torchrun --nproc_per_node=2 run.py                # data-parallel training
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from diffusion.app import command_line, run_job

CONF_DIR = str(Path(__file__).resolve().parent / "conf")


def main() -> None:
    """The command line; Hydra's own errors (an unknown option or key, an unparsable override, an output
    directory it cannot create) become one line and exit 2 like every other user error."""
    with command_line():
        run_task()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def run_task(cfg: DictConfig) -> float | None:
    return run_job(cfg)


if __name__ == "__main__":
    main()

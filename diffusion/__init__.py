"""Diffusion: components for DDPM/DDIM-style generative-model research.

The package never imports Hydra or OmegaConf: every component takes plain typed constructor arguments, and
``run.py`` composes and instantiates them from ``conf/``.
"""

__version__ = "0.1.0"

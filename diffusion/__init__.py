"""Diffusion: components for DDPM/DDIM-style generative-model research.

Components take plain typed constructor arguments and never import Hydra or OmegaConf; ``run.py`` composes and
instantiates them from ``conf/``, helped by :mod:`diffusion.app`, the one subpackage that reads Hydra's objects.
"""

__version__ = "0.1.0"

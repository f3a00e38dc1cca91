"""Hydra plugin: the diffusion_optuna sweeper (see optuna_sweeper.py)."""

"""Hydra plugin: this repository's ``hydra/sweeper=optuna`` (see optuna_sweeper.py)."""

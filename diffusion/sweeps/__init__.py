"""Sweep tooling that lives beside the training code: seed groups for the report, Optuna pruning for a search.

Modules import their optional dependencies (optuna) themselves; importing the package imports nothing.
"""

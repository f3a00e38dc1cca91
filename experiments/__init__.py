"""Benchmarks, studies and tools around ``run.py``; run each from the repository root as a module
(``python -m experiments.benchmarks.speed --quick``). What they share lives in :mod:`experiments.lib`."""

"""Benchmarks, studies and tools around ``run.py``; run each from the repository root as a module
(``python -m experiments.benchmark --quick``). What they share lives in :mod:`experiments.lib`."""

"""``python -m experiments.benchmarks.repa --quick``: two toy MNIST DiT runs (without and with REPA) scored at each
quarter of the budget; the report's table, its check line and the plot of FD against steps are written. Structure
only: a toy run's FD says nothing. Two run.py launches (mostly start-up): about 2 minutes on 2 busy cores."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from experiment_scripts import quick_report, table


@pytest.mark.slow
def test_repa_benchmark_quick(tmp_path: Path):
    text = quick_report("experiments.benchmarks.repa", tmp_path, "REPA on the MNIST DiT (CPU)", checks=1)
    rows = table(text)
    assert [row[1] for row in rows] == ["1/4", "1/2", "3/4", "all"]
    steps = [int(row[0]) for row in rows]
    assert steps == sorted(steps) and steps[-1] == 4 * steps[0]  # equal steps for both runs, every quarter
    for row in rows:
        assert all(re.fullmatch(r"[\d.e+]+ ± [\d.e+-]+", cell) for cell in row[2:4]), row  # FD over 3 sets
    assert "method.repa.weight=0.5 method.repa.encoder=mnist" in text
    assert (tmp_path / "results" / "repa_fd_vs_steps.png").stat().st_size > 0

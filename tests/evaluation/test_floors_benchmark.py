"""``experiments.benchmarks.floors --quick`` runs end to end and writes its report (slow: two run.py launches)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_floors_benchmark_writes_its_report(tmp_path: Path) -> None:
    out = tmp_path / "floors.md"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-m", "experiments.benchmarks.floors", "--quick", "--threads", "1",
                             "--work-dir", str(tmp_path / "runs"), "--out", str(out)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    text = out.read_text()
    assert "| digits | fd | 8 |" in text and "seed=1 against seed=0: fd" in text and text.count("**PASS**") + \
        text.count("**FAIL**") == 2

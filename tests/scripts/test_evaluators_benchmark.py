"""``experiments.benchmarks.evaluators --quick`` runs end to end and writes its report (slow: two run.py
launches): every evaluator has a row, run or "not run" with its reason, and every feature network a cost."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_evaluators_benchmark_writes_its_report(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    out = tmp_path / "evaluators.md"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-m", "experiments.benchmarks.evaluators", "--quick", "--threads", "1",
                             "--work-dir", str(tmp_path / "runs"), "--out", str(out)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    text = out.read_text()
    assert "| digits | fd |" in text and "| dinov2 (stand-in) | fd_dinov2 |" in text
    assert "| cmmd | cmmd | not run |" in text and "(--clip) |" in text
    for network in ("digit classifier", "DINOv2 ViT-L/14 (tiny)", "CLIP ViT-L/14 (tiny)", "FID Inception-v3"):
        assert f"| {network} |" in text
    assert text.count("**PASS**") + text.count("**FAIL**") == 1  # digits' ranking: the one evaluator with weights

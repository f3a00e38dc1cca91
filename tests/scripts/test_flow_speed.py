"""The flow speed benchmark's loops integrate the same ODE: the Sampler, a bare loop, Meta's ODESolver and
diffusers' FlowMatchEulerDiscreteScheduler return the same samples, and the report has its tables and checks."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from experiments.benchmarks.speed import flow


def test_loops_agree_and_report(tmp_path: Path, capsys):
    torch.set_num_threads(1)
    loops = flow.sampling_loops(num_samples=6, steps=4, device=torch.device("cpu"))
    reference = loops["sampler"]()
    assert reference.shape == (6, 1, 8, 8)
    for name in ("bare", "flow_matching", "diffusers"):
        assert torch.allclose(loops[name](), reference, atol=1e-5), name
    out = tmp_path / "flow.md"
    assert flow.main(["--quick", "--rounds", "1", "--out", str(out)]) == 0  # --quick never fails on its figures
    text = out.read_text()
    assert len(re.findall(r"^- \*\*(PASS|FAIL)\*\* ", text, re.M)) == 4
    assert "| trainer |" in text and "| diffusers |" in text

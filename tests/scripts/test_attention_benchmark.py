"""The attention-precision benchmark times what it says: its bf16-kernel variant hands attention to PyTorch in
bf16, the project's variant in float32, and its report has one check per backbone."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from attention_calls import AttentionDtypes

from diffusion.models.attention import attention
from experiments.benchmarks.speed import attention as benchmark


def test_the_bf16_kernel_variant_attends_in_bf16_and_the_projects_in_float32():
    q = torch.randn(2, 2, 5, 4, dtype=torch.bfloat16)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            attention(q, q, q)

    with AttentionDtypes() as seen:
        benchmark.with_bf16_kernel(step)()
        step()
    assert seen.dtypes == [torch.bfloat16, torch.float32]


def test_quick_run_reports_every_backbone(tmp_path: Path):
    out = tmp_path / "attention.md"
    assert benchmark.main(["--quick", "--rounds", "1", "--out", str(out)]) == 0  # --quick never fails on figures
    text = out.read_text()
    assert len(re.findall(r"^- \*\*(PASS|FAIL)\*\* ", text, re.M)) == 4
    assert all(f"| {name} |" in text for name in ("U-Net", "DiT", "U-ViT", "EDM2 U-Net"))

"""``python -m experiments.tools.gpu_check --quick`` on the CPU: the GPU check's code runs end to end on a toy U-Net."""

from __future__ import annotations

import pytest

from experiments.tools import gpu_check


def run_quick(tmp_path, *extra: str) -> str:
    out = tmp_path / "gpu_check.md"
    assert gpu_check.main(["--quick", "--device", "cpu", "--threads", "1", "--peak-tflops", "1", "--out", str(out),
                           *extra]) == 0
    return out.read_text()


def test_quick_run_writes_the_training_and_sampling_tables(tmp_path):
    text = run_quick(tmp_path, "--no-compile")
    assert "| training variant | steps/s | images/s | model TFLOP/s | share of bf16 peak | peak memory |" in text
    assert "| fp32 |" in text and "| bf16 |" in text
    assert "| DDIM-3, bf16, batch 4 |" in text and "| DDIM-3, fp32, batch 4 |" in text
    assert "bf16 peak: 1 TFLOP/s (--peak-tflops)" in text
    assert "Model: `model=dit " in text and "synthetic 4x32x32 data" in text  # the DiT-B/2 check's section
    assert "method=flow_matching` " in text and "| bf16 + REPA, stored features |" in text  # SiT-B/2 + REPA
    assert "| bf16 + REPA, DINOv2-B forward |" in text and "REPA overhead (plain steps/s over REPA steps/s" in text


@pytest.mark.slow  # torch.compile's tracing: about 20 s on a busy 2-core machine
def test_quick_run_traces_the_compiled_variant(tmp_path):
    assert "| bf16 + torch.compile (eager) |" in run_quick(tmp_path)


def test_known_gpus_resolve_to_their_bf16_peak(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 PCIe")
    assert gpu_check.peak_tflops(torch.device("cuda"), None)[0] == 756.0
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    assert gpu_check.peak_tflops(torch.device("cuda"), None)[0] == 989.0
    assert gpu_check.peak_tflops(torch.device("cpu"), None)[0] is None
    assert gpu_check.peak_tflops(torch.device("cpu"), 50.0) == (50.0, "--peak-tflops")

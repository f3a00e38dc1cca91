"""Every experiments script in ``--quick`` mode, as a user runs it (``python -m experiments.<script>``), into a
temporary directory: it exits 0 and writes its results file with the parts a reader looks for.

Structure only: a one-epoch toy model's scores say nothing, so no figure is checked against a bar. Each script
but the classifier's launches ``run.py`` one to six times, and most of a launch is start-up (importing torch and
sklearn: about 9 s on a busy core), so those six are marked ``slow`` (``pytest -m "not slow"`` leaves them out):
19 launches, 9.6 minutes together on 2 cores shared with other jobs (load 6-8); ``experiments.benchmarks.speed.threads``
adds 5 launches, about 2 minutes. ``experiments.benchmarks.speed`` has its own, ``test_speed_benchmark.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from experiment_scripts import MACHINE, assert_checks_report, quick_report, run_quick, table
from safetensors import safe_open


@pytest.mark.slow
def test_quality_benchmark(tmp_path: Path):
    out = tmp_path / "results" / "quality.md"
    result = run_quick("experiments.benchmarks.quality", "--work-dir", str(tmp_path / "runs"), "--out", str(out))
    text = out.read_text()
    assert text.strip() in result.stdout
    assert_checks_report(text, "Sample quality against sampling cost: default run",
                         "experiments.benchmarks.quality", checks=3)
    rows = table(text)
    assert [(r[0], r[1], r[2]) for r in rows] == [("DDPM", "20", "all"), ("DDIM", "5", "leading"),
                                                  ("DDIM", "10", "leading"), ("DPM-Solver++(2M)", "5", "trailing")]
    for row in rows:
        assert len(row) == 10 and re.fullmatch(r"\d+(\.\d+)?", row[3].split(" ± ")[0]), row  # FD is a number
        assert re.fullmatch(r"\d+\.\dx", row[9]), row  # speed-up
    assert "fp32 network" in text and "trainer.epochs=1" in text


@pytest.mark.slow
def test_guidance_benchmark(tmp_path: Path):
    out = tmp_path / "guidance.md"
    run_quick("experiments.benchmarks.guidance", "--work-dir", str(tmp_path / "runs"), "--out", str(out))
    text = out.read_text()
    assert_checks_report(text, "Classifier-free guidance and DPM-Solver++ on class-conditional digits",
                         "experiments.benchmarks.guidance", checks=3)
    rows = table(text)
    assert [(r[0], r[1], r[3]) for r in rows] == [("DDPM", "20", "0"), ("DDPM", "20", "3"), ("DDIM", "10", "0"),
                                                  ("DDIM", "10", "3"), ("DPM-Solver++(2M)", "5", "3")]
    for row in rows:
        assert re.fullmatch(r"\d+\.\d%", row[4]) and re.fullmatch(r"\d+%", row[5]), row  # class accuracy, worst


def test_train_digit_classifier(tmp_path: Path):
    out = tmp_path / "classifier.safetensors"
    result = run_quick("experiments.tools.train_digit_classifier", "--out", str(out))
    assert re.search(r"held-out accuracy \d\.\d{4} +trained in", result.stdout)
    with safe_open(str(out), framework="pt") as weights:
        metadata = weights.metadata()
    assert metadata["epochs"] == "1" and 0.0 <= float(metadata["val_accuracy"]) <= 1.0


@pytest.mark.slow  # three toy runs, a post-hoc sweep and ten evaluations
def test_edm_benchmark(tmp_path: Path):
    out = tmp_path / "results" / "edm.md"
    result = run_quick("experiments.benchmarks.edm", "--work-dir", str(tmp_path / "runs"), "--out", str(out))
    text = out.read_text()
    assert text.strip() in result.stdout
    assert_checks_report(text, "EDM, sigma-space samplers, post-hoc EMA and autoguidance on digits",
                         "experiments.benchmarks.edm", checks=4)
    assert "![FD against NFE](edm_fd_vs_nfe.png)" in text
    assert (out.parent / "edm_fd_vs_nfe.png").read_bytes().startswith(b"\x89PNG")
    labels = {row[0] for row in table(text)}
    assert {"DDPM", "EDM Heun", "EDM DPM++(2M)", "DDPM ckpt, Heun", "DDPM ckpt, DDIM"} <= labels


@pytest.mark.slow  # one epoch of 4,500 28x28 digits: about half a minute on a busy core
def test_train_mnist_classifier(tmp_path: Path):
    out = tmp_path / "mnist_classifier.safetensors"
    result = run_quick("experiments.tools.train_mnist_classifier", "--out", str(out))
    assert re.search(r"held-out accuracy \d\.\d{4} +trained in", result.stdout)
    with safe_open(str(out), framework="pt") as weights:
        metadata = weights.metadata()
    assert metadata["epochs"] == "1" and metadata["image_size"] == "28" and float(metadata["val_accuracy"]) > 0.5


def run_study(study: str, tmp_path: Path) -> tuple[str, Path]:
    """A study's ``--quick`` run; its report.md and the folder the report and figures went to."""
    out = tmp_path / "report"
    run_quick(f"experiments.studies.{study}", "--work-dir", str(tmp_path / "runs"), "--out", str(out))
    text = (out / "report.md").read_text()
    assert MACHINE.match(re.search(r"^- \*\*Measured\*\*: (.+)$", text, re.M).group(1))
    assert re.search(r"^- \*\*Budget\*\*: `--quick`: 1 epochs of a 37k-parameter U-Net \(T = 20\)", text, re.M)
    assert f"- **Reproduce**: `python -m experiments.studies.{study} --quick`" in text
    assert re.search(r"## Commands run\n\n```bash\npython run.py ", text)
    for figure in re.findall(r"!\[[^]]*\]\(([^)]+)\)", text):
        assert (out / figure).is_file(), figure
    return text, out


@pytest.mark.slow
def test_study_schedules(tmp_path: Path):
    text, _ = run_study("schedules", tmp_path)
    assert [row[0] for row in table(text)] == ["linear", "cosine", "sigmoid"]
    assert re.search(r"Lowest FD: \*\*(linear|cosine|sigmoid)\*\*", text)


@pytest.mark.slow
def test_study_targets(tmp_path: Path):
    text, out = run_study("targets", tmp_path)
    assert len(table(text)) == 6 and (out / "fd.png").is_file()


@pytest.mark.slow
def test_study_sampling_steps(tmp_path: Path):
    text, _ = run_study("sampling_steps", tmp_path)
    assert "| sampler \\ steps |" in text
    assert re.search(r"^\| DDIM, eta = 0, no x0 clipping \| 10 \| \d", text, re.M)


@pytest.mark.slow
def test_study_optuna_ema_lr(tmp_path: Path):
    text, _ = run_study("optuna_ema_lr", tmp_path)
    assert re.search(r"`trainer\.lr=\S+ trainer\.ema_decay=\S+`: best validation loss \d", text)
    assert [row[0] for row in table(text)] == ["0", "1", "defaults (not a trial)"]


@pytest.mark.slow
def test_benchmark_threads(tmp_path: Path):
    out = tmp_path / "threads.md"
    run_quick("experiments.benchmarks.speed.threads", "--work-dir", str(tmp_path / "runs"), "--out", str(out))
    text = out.read_text()
    assert_checks_report(text, "Two training runs on one node: the thread budget",
                         "experiments.benchmarks.speed.threads", checks=2)
    rows = table(text)
    assert [row[1] for row in rows] == ["1", "2", "2"]
    assert rows[2][0].endswith("num_threads=auto, $DIFFUSION_JOBS_PER_NODE=2")
    assert all(re.fullmatch(r"\d+\.\d\d(, \d+\.\d\d)?", row[4]) for row in rows), rows


@pytest.mark.slow  # five toy runs (a reflow among them) and eleven evaluations, three seed sets each
def test_flow_benchmark(tmp_path: Path):
    out = tmp_path / "results" / "flow.md"
    result = run_quick("experiments.benchmarks.flow", "--work-dir", str(tmp_path / "runs"), "--out", str(out))
    text = out.read_text()
    assert text.strip() in result.stdout
    assert_checks_report(text, "Flow matching, its solvers, couplings and reflow against DDPM on digits",
                         "experiments.benchmarks.flow", checks=5)
    assert "![FD against NFE](flow_fd_vs_nfe.png)" in text
    assert (out.parent / "flow_fd_vs_nfe.png").read_bytes().startswith(b"\x89PNG")
    rows = table(text)
    samplers = {(row[0], row[1]) for row in rows}
    assert {("DDPM", "DDIM-5"), ("linear + logit-normal", "Heun-2"), ("linear + logit-normal", "dopri5"),
            ("linear + logit-normal", "Euler-Maruyama-3"), ("2-rectified flow", "Euler-1")} <= samplers
    couplings = {row[0] for row in rows if len(row) == 2}
    assert {"linear + logit-normal", "linear + logit-normal + OT", "2-rectified flow"} <= couplings
    assert sum("bits/dim" in row[1] for row in rows if len(row) == 5) == 2  # the NLL of the DDPM and flow runs


@pytest.mark.slow  # four toy runs, three seed sets each, after a side-by-side throughput measurement
def test_backbones_benchmark(tmp_path: Path):
    text = quick_report("experiments.benchmarks.backbones", tmp_path,
                        "Backbones at equal parameters and equal wall time (mnist budget)", checks=6)
    rows = table(text)
    assert [row[0] for row in rows] == ["U-Net", "DiT", "U-ViT", "EDM2 U-Net"]
    assert rows[0][2] == "1.00x" and rows[0][8] == "1.00x"  # the U-Net is the reference of both ratios
    assert all(int(row[3]) >= 1 and row[5].endswith("%") for row in rows)
    assert [row[6].endswith("%") for row in rows] == [False, True, True, False]  # an MLP matmul: the transformers

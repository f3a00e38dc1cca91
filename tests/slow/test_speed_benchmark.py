"""``python -m experiments.benchmarks.speed --quick`` runs every section and prints the full table (marked ``slow``, like
the other experiments scripts' smoke runs: ``pytest -m slow``).

Structure only: on shared CPUs the figures themselves say nothing in a test, so no speed is asserted.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from runs import ROOT

ROWS = ("trainer-overhead", "precision", "compile", "ddim-vs-ddpm", "sampler-overhead-ddpm", "sampler-overhead-ddim",
        "noise-streams", "flops", "memory", "memory-cifar10", "torchrun-sampling")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """One ``--quick`` run for the whole module, single-threaded (OpenMP threads on busy cores spin-wait)."""
    out = tmp_path_factory.mktemp("benchmark") / "results" / "benchmark.md"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "experiments.benchmarks.speed", "--quick", "--threads", "1", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result, out


def table_rows(text: str) -> dict[str, list[str]]:
    """Cells of each table row, keyed by the row's name."""
    rows = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] in ROWS:
            rows[cells[0]] = cells
    return rows


@pytest.mark.slow  # the quick benchmark: about 2 minutes on 2 busy cores
def test_quick_run_writes_the_printed_table(quick_run):
    result, out = quick_run
    assert out.is_file()
    assert out.read_text().strip() == result.stdout.strip()


@pytest.mark.slow  # the quick benchmark: about 2 minutes on 2 busy cores
def test_header_names_the_machine_and_the_date(quick_run):
    text = quick_run[0].stdout
    assert re.search(r"- machine: .+, \d+ cores", text)
    assert re.search(r"- torch \S+, intra-op threads: \d+", text)
    assert re.search(r"- date: \d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC", text)
    assert "| name | measurement | figure | bar | verdict | reproduce |" in text


@pytest.mark.slow  # the quick benchmark: about 2 minutes on 2 busy cores
def test_every_figure_has_a_row_and_a_reproduce_command(quick_run):
    rows = table_rows(quick_run[0].stdout)
    assert sorted(rows) == sorted(ROWS)
    for name, cells in rows.items():
        assert len(cells) == 6, name
        assert re.match(r"`(OMP_NUM_THREADS=\d+ )?python ", cells[5]) and cells[5].endswith("`"), name
    assert "--only training" in rows["trainer-overhead"][5] and "--only sampling" in rows["sampler-overhead-ddpm"][5]
    assert "run.py" in rows["memory"][5] and "evaluator=none" in rows["memory"][5]


@pytest.mark.slow  # the quick benchmark: about 2 minutes on 2 busy cores
def test_the_two_bars_have_verdicts(quick_run):
    text = quick_run[0].stdout
    rows = table_rows(text)
    for name in ("trainer-overhead", "sampler-overhead-ddpm", "sampler-overhead-ddim"):
        assert rows[name][4] in ("PASS", "FAIL"), name
    assert re.search(r"^Bars: trainer-overhead: (PASS|FAIL); sampler-overhead-ddpm: (PASS|FAIL); "
                     r"sampler-overhead-ddim: (PASS|FAIL)$", text, re.M)


@pytest.mark.slow  # the quick benchmark: about 2 minutes on 2 busy cores
def test_figures_are_numbers_where_measured(quick_run):
    rows = table_rows(quick_run[0].stdout)
    assert re.match(r"\d+\.\d+x \(\d+\.\d+ vs \d+\.\d+ steps/s\)", rows["trainer-overhead"][2])
    assert "skipped" in rows["compile"][2]  # --quick does not compile
    assert re.search(r"samples agree to", rows["sampler-overhead-ddpm"][2])
    assert re.search(r"\d+ MiB peak; \d+ -> \d+ MiB after epochs 2 -> 3", rows["memory"][2])
    assert rows["memory"][4] in ("flat", "GROWS")
    # memory-cifar10 at --quick: 6 x 200 synthetic CIFAR images against 6 x 100; the 600 more are 600 x 3,072 bytes = 2 MiB
    assert re.search(r"\d+ vs \d+ MiB peak: the 600 more images add -?\d+ MiB \(their uint8 size 2 MiB; float32 "
                     r"would be 7 MiB\)", rows["memory-cifar10"][2]), rows["memory-cifar10"][2]
    assert "data=cifar10" in rows["memory-cifar10"][5]


def test_cuda_without_a_gpu_is_one_clear_line():
    if __import__("torch").cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = subprocess.run([sys.executable, "-m", "experiments.benchmarks.speed", "--device", "cuda", "--quick"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: --device cuda but no CUDA device is available; "
                                                  "use --device cpu"]

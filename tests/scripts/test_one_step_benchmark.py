"""``python -m experiments.benchmarks.one_step --quick`` as a user runs it, into a temporary directory: it exits 0
and writes its checks report with one row per run and step count. Structure only (toy runs' scores mean nothing):
ten trainings and twenty evaluations, about four minutes on a busy core, hence ``slow``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from experiment_scripts import quick_report, table


@pytest.mark.slow
def test_one_step_benchmark(tmp_path: Path):
    text = quick_report("experiments.benchmarks.one_step", tmp_path,
                        "One- and two-step generators on digits: MeanFlow, shortcut, sCT, ECT and sCD", checks=3)
    rows = table(text)
    flows = ("MeanFlow", "MeanFlow, 2x budget", "shortcut", "shortcut, 2x budget")
    assert [(r[0], r[2], r[3]) for r in rows] == [
        ("DDPM", "20", "20"), ("EDM", "18", "35"), *((run, str(k), str(k)) for run in flows for k in (1, 2, 4)),
        *((run, str(k), str(k)) for run in ("sCT", "sCT, 2x budget", "ECT", "sCD") for k in (1, 2)),
        *((f"{name} student (distill_cpu.md)", str(k), str(k)) for name, k in
          (("progressive", 4), ("consistency", 1), ("consistency", 2)))]
    for row in rows[:-3]:
        assert re.fullmatch(r"\d+(\.\d+)? ± \d+(\.\d+)?(e-\d+)?", row[4]), row  # FD over the seed sets
        assert re.fullmatch(r"\d+\.\d\d", row[6]) and row[7].isdigit(), row  # training ratio, optimizer steps
    ect, teacher = next(r for r in rows if r[0] == "ECT"), rows[1]
    assert int(ect[7]) < int(teacher[7])  # tuned at a share of the teacher's steps

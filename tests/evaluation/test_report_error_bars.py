"""The sweep report carries each score's standard error, its ratio to the floor with the interval, and the flag."""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

from diffusion.evaluation.evaluators import MetricValue
from diffusion.evaluation.results import metrics_to_json
from diffusion.sweeps.report import write_report


def _job(sweep: Path, name: str, fd: MetricValue) -> None:
    job = sweep / name
    job.mkdir(parents=True)
    (job / "config.yaml").write_text("trainer:\n  epochs: 1\n")
    (job / "overrides.yaml").write_text(f"- trainer.lr=0.00{name}1\n")
    (job / "checkpoints").mkdir()
    (job / "checkpoints" / "last.pt").write_bytes(b"x")
    (job / "metrics.jsonl").write_text(json.dumps({"step": 1, "time": 1.0, "epoch": 1, "val/loss": 0.5}) + "\n")
    (job / "eval.json").write_text(json.dumps(metrics_to_json({"fd": fd}, 500, "ddpm", 1000, 0.01)))
    hour_ago = time.time() - 3600
    for path in job.rglob("*"):
        os.utime(path, (hour_ago, hour_ago))


def test_report_shows_value_plus_minus_error_and_the_ratio_to_the_floor(tmp_path: Path) -> None:
    _job(tmp_path, "0", MetricValue(2.4, 1.6, 0.3, floor_std=0.5, floor_std_error=0.05))
    _job(tmp_path, "1", MetricValue(0.8, 1.6, 0.1, floor_std=0.5, floor_std_error=0.05, beats_floor=True,
                                    near_copies=0.25))
    write_report(tmp_path, None)
    markdown = (tmp_path / "report.md").read_text()
    assert "| fd / floor |" in markdown
    assert "2.4 ± 0.3" in markdown and "1.5x [" in markdown
    assert "0.8 ± 0.1 beats real data (near-copies 25.0%)" in markdown
    with open(tmp_path / "report.csv", newline="") as handle:
        rows = {row["job"]: row for row in csv.DictReader(handle)}
    assert float(rows["0"]["fd"]) == 2.4 and float(rows["0"]["fd_se"]) == 0.3
    low, high = float(rows["0"]["fd_ratio_low"]), float(rows["0"]["fd_ratio_high"])
    assert float(rows["0"]["fd_ratio"]) == 1.5 and low < 1.5 < high


def test_summary_values_carry_error_bars_floors_and_ratios() -> None:
    from diffusion.evaluation.results import summary_values

    fd = MetricValue(2.4, 1.6, 0.3, floor_std=0.5, floor_std_error=0.05)
    summary = summary_values(metrics_to_json({"fd": fd}, 500, "ddpm", 1000, 0.01))
    assert summary["fd"] == 2.4 and summary["fd_se"] == 0.3 and summary["fd_floor"] == 1.6
    assert summary["fd_floor_std"] == 0.5 and abs(summary["fd_ratio"] - 1.5) < 1e-12
    assert summary["fd_ratio_low"] < 1.5 < summary["fd_ratio_high"] and "fd_near_copies" not in summary
    assert "num_samples" not in summary and "steps" not in summary

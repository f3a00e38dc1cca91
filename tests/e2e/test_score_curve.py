"""The score against training images seen (kimg, as EDM/EDM2 plot it): the periodic evaluation logs kimg, and the
run ends with score_vs_kimg.png beside it and the same curves as W&B charts."""

from __future__ import annotations

import json

import pytest
from runs import TINY_MOONS, ok, run_py

from diffusion.loggers.base import BaseLogger
from diffusion.tasks.score_curve import CURVE_FILE, kimg, score_curves, write_score_curve


class CurveSpy(BaseLogger):
    def __init__(self) -> None:
        self.curves: list[tuple[str, str, dict]] = []

    def log(self, info, step=None) -> None:
        pass

    def log_hyperparams(self, params) -> None:
        pass

    def log_curve(self, key, x_name, curves) -> None:
        self.curves.append((key, x_name, curves))


def test_curve_reads_each_epochs_later_record_and_skips_epochs_without_evaluation(tmp_path):
    records = [
        {"step": 10, "epoch": 1, "val/loss": 1.0, "kimg": 1.28, "fd": 9.0},
        {"step": 20, "epoch": 2, "val/loss": 0.9},  # not an evaluation epoch
        {"step": 30, "epoch": 3, "val/loss": 0.8, "kimg": 3.84, "fd": 5.0},
        {"step": 30, "epoch": 3, "val/loss": 0.8, "kimg": 3.84, "fd": 4.0},  # a resumed run's repeat: it wins
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert score_curves(tmp_path, ["fd", "kid"]) == {"fd": [(1.28, 9.0), (3.84, 4.0)]}
    spy = CurveSpy()
    assert write_score_curve(tmp_path, ["fd"], spy) == tmp_path / CURVE_FILE and (tmp_path / CURVE_FILE).is_file()
    assert spy.curves == [("score_vs_kimg", "kimg", {"fd": [(1.28, 9.0), (3.84, 4.0)]})]
    assert kimg(30, 128) == pytest.approx(3.84)


def test_no_periodic_evaluation_no_curve(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 10, "epoch": 1, "val/loss": 1.0}) + "\n")
    spy = CurveSpy()
    assert write_score_curve(tmp_path, ["fd"], spy) is None and not spy.curves
    assert not (tmp_path / CURVE_FILE).exists()


def test_training_run_draws_the_curve_and_logs_it_to_wandb_offline(tmp_path):
    run_dir = tmp_path / "run"
    ok(run_py(tmp_path, f"hydra.run.dir={run_dir}", *TINY_MOONS, "evaluator.every_n_epochs=1",
              "evaluator.floor_draws=4", "evaluator.bootstrap=0", "trainer.batch_size=100", "logger=both"))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evaluated = [r for r in records if "kimg" in r]
    assert [r["epoch"] for r in evaluated] == [1, 2]
    assert all(r["kimg"] == pytest.approx(r["step"] * 100 / 1000) for r in evaluated)
    assert all("precision" in r and "sliced_wasserstein" in r for r in evaluated)
    assert (run_dir / CURVE_FILE).stat().st_size > 1000
    # The offline W&B run holds one table per score's chart.
    tables = list((run_dir / "wandb").glob("offline-run-*/files/media/table/score_vs_kimg/*.table.json"))
    names = {path.name.rsplit("_table_", 1)[0] for path in tables}
    assert names == {"sliced_wasserstein", "mmd", "energy", "precision", "recall", "memorization"}, names
    table = json.loads(next(p for p in tables if p.name.startswith("precision")).read_text())
    assert table["columns"] == ["kimg", "precision"] and len(table["data"]) == 2

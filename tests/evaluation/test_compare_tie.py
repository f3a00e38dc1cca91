"""The tie rule of ``task=compare`` on closed-form numbers, on eval.json files, and on real runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from runs import main_in_process

from diffusion.evaluation.evaluators import MetricValue
from diffusion.evaluation.results import metrics_to_json
from diffusion.evaluation.uncertainty import Z95, difference
from diffusion.runtime.checks import ConfigError
from diffusion.tasks.compare import compare, compare_runs


def test_a_difference_is_a_tie_when_its_interval_holds_zero() -> None:
    se = (0.3**2 + 0.4**2) ** 0.5  # 0.5
    assert difference("fd", 2.0, 0.3, 2.0 + Z95 * se * 0.99, 0.4).tie
    assert not difference("fd", 2.0, 0.3, 2.0 + Z95 * se * 1.01, 0.4).tie
    assert not difference("fd", 2.0, 0.3, 2.0 - Z95 * se * 1.01, 0.4).tie
    exact = difference("fd", 1.0, None, 1.0, None)
    assert exact.tie and exact.interval.std_error == 0.0 and not difference("fd", 1.0, None, 1.1, None).tie


def _write_eval(run_dir: Path, value: float, std_error: float, floor: float = 1.5) -> Path:
    run_dir.mkdir()
    record = metrics_to_json({"fd": MetricValue(value, floor, std_error, floor_std=0.3, floor_std_error=0.03)},
                             500, "ddpm", 1000, 0.01)
    (run_dir / "eval.json").write_text(json.dumps(record))
    return run_dir


def test_compare_reads_eval_json_and_refuses_other_data(tmp_path: Path) -> None:
    a = _write_eval(tmp_path / "a", 2.4, 0.3)
    b = _write_eval(tmp_path / "b", 2.6, 0.3)
    c = _write_eval(tmp_path / "c", 4.0, 0.3)
    (same,), (worse,) = (comparison.differences for comparison in compare_runs([a, b, c]))
    assert same.tie and same.interval.estimate == pytest.approx(0.2)
    assert not worse.tie and worse.interval.low > 0
    table = compare([a, b, c])
    assert "| fd | 2.4 ± 0.3 | 2.6 ± 0.3 |" in table and "| tie |" in table and "baseline better" in table
    other = _write_eval(tmp_path / "other", 2.4, 0.3, floor=0.9)
    with pytest.raises(ConfigError, match="different real data"):
        compare_runs([a, other])
    with pytest.raises(ConfigError, match="no eval.json"):
        compare_runs([a, tmp_path / "missing"])
    with pytest.raises(ConfigError, match="at least two"):
        compare_runs([a])


MOONS_RUN = [
    "experiment=moons_mlp", "trainer.progress=false", "data.num_samples=1000", "model.hidden_dim=32",
    "model.num_layers=2", "method.num_timesteps=20", "sampler.num_samples=200", "evaluator=moons",
    "evaluator.num_samples=200",
    # The three distances, all lower-is-better; memorization is about 0 for a stopped and a trained run alike.
    "evaluator.neighbour_metrics=false",
]


def test_two_seeds_of_one_config_tie_and_a_stopped_run_does_not(tmp_path: Path, monkeypatch, capsys) -> None:
    runs = {
        "seed0": ["trainer.epochs=20", "seed=0"],
        "seed1": ["trainer.epochs=20", "seed=1"],
        "stopped": ["trainer.max_steps=2", "seed=0"],  # two optimizer steps: barely moved from initialisation
    }
    for name, overrides in runs.items():
        assert main_in_process(monkeypatch, *MOONS_RUN, *overrides, f"hydra.run.dir={tmp_path / name}") == 0
    seeds, stopped = compare_runs([tmp_path / "seed0", tmp_path / "seed1", tmp_path / "stopped"])
    assert all(d.tie for d in seeds.differences), seeds.differences
    assert not any(d.tie for d in stopped.differences), stopped.differences
    assert all(d.interval.low > 0 for d in stopped.differences)  # the stopped run is worse on every score
    capsys.readouterr()
    assert main_in_process(monkeypatch, "task=compare",
                           f"run_dir=[{tmp_path / 'seed0'},{tmp_path / 'seed1'},{tmp_path / 'stopped'}]",
                           f"hydra.run.dir={tmp_path / 'compared'}") == 0
    written = (tmp_path / "compared" / "compare.md").read_text()
    assert "| tie |" in written and "baseline better" in written and written.strip() in capsys.readouterr().out


def test_compare_of_fewer_than_two_runs_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    code = main_in_process(monkeypatch, "task=compare", f"run_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'out'}")
    error = capsys.readouterr().err.strip()
    assert code == 2 and error.count("\n") == 0 and "at least two" in error

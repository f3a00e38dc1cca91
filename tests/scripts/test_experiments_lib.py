"""``experiments.lib``: the pieces every experiments script shares, without launching a training run."""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

import pytest

from experiments import lib

EVAL = {
    "fd": {"value": 2.5, "floor": 2.1, "std_error": 0.3},
    "kid": {"value": None, "floor": 0.007},
    "num_samples": 20,
    "steps": 1000,
    "seconds_per_sample": 0.2,
    "sampler_steps": [
        {"steps": 10, "num_samples": 20, "seconds_per_sample": 0.01, "fd": {"value": 3.0, "floor": 2.1}},
        {"steps": 20, "num_samples": 20, "seconds_per_sample": 0.02, "fd": {"value": 2.7, "floor": 2.1}},
    ],
}


def test_scores_of_keeps_value_error_and_floor_and_skips_the_rest():
    scores = lib.scores_of(EVAL)
    assert set(scores) == {"fd", "kid"}
    assert scores["fd"] == lib.Score(2.5, 0.3, 2.1)
    assert math.isnan(scores["kid"].value) and scores["kid"].std_error is None


def test_sampler_rows_read_one_row_per_scored_step_count(tmp_path: Path):
    (tmp_path / "eval.json").write_text(json.dumps(EVAL))
    rows = lib.sampler_rows(tmp_path, "DDIM")
    assert [(r.label, r.steps, r.spacing) for r in rows] == [("DDIM", 10, "leading"), ("DDIM", 20, "leading")]
    assert rows[1].scores["fd"].value == 2.7 and rows[1].directory == tmp_path


def test_read_eval_names_the_missing_file(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"eval\.json is missing"):
        lib.read_eval(tmp_path)


def test_formatting():
    assert lib.fmt(None) == "n/a" and lib.fmt(math.nan) == "n/a" and lib.fmt(0.012345) == "0.0123"
    assert lib.fmt_score(lib.Score(1.634, 0.291, 2.1)) == "1.63 ± 0.29"
    assert lib.fmt_score(lib.Score(1.634, None, None)) == "1.63" and lib.fmt_score(None) == "n/a"
    assert lib.markdown_table(["a", "b"], [["1", "2"]]) == ["| a | b |", "|---|---|", "| 1 | 2 |"]


def test_checks_report_states_each_check_and_whether_all_passed():
    machine = lib.describe_machine()
    text, passed = lib.checks_report("Title", machine, "How.", ["| t |"], [(True, "one"), (False, "two")], 90.0,
                                     "python -m experiments.x")
    assert not passed
    assert text.startswith("# Title\n\n" + machine.line())
    assert "- **PASS** one\n- **FAIL** two" in text
    assert "Benchmark wall time 1.5 min. Reproduce: `python -m experiments.x`" in text


def test_machine_names_cpu_bf16_hardware_cores_torch_commit_and_date():
    machine = lib.describe_machine()
    assert re.search(r"AVX-512 BF16: (yes|no), AMX: (yes|no)", machine.bf16_features)
    assert re.match(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC · .+, \d+ cores \(AVX-512 BF16", machine.line())
    assert re.search(r"torch \S+ \(\d+ threads\)", machine.line())
    assert re.search(r"commit (\w+|unknown)", machine.code)
    assert "- date: " in machine.markdown()


def test_common_flags_and_threads(monkeypatch):
    parser = lib.add_common_flags(argparse.ArgumentParser(), out_help="where", threads=1)
    args = parser.parse_args(["--quick", "--out", "x.md"])
    assert args.quick and args.out == Path("x.md") and args.threads == 1
    with pytest.raises(SystemExit):
        parser.parse_args(["--threads", "-1"])
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    lib.set_threads(0)  # 0: leave torch's default
    assert "OMP_NUM_THREADS" not in lib.run_py_env()


def test_a_failed_run_py_says_which_command_and_ends_with_its_output(tmp_path: Path):
    with pytest.raises(RuntimeError) as failure:
        lib.run_py(["no_such_group=1", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path / "run.log")
    command, log, tail = str(failure.value).split("\n", 2)
    assert re.fullmatch(r"run\.py exited with [1-9]\d*: python run\.py no_such_group=1 hydra\.run\.dir=\S+", command)
    assert log == f"(log: {tmp_path / 'run.log'})"
    assert "no_such_group" in tail  # run.py's own complaint, from the end of its log
    assert (tmp_path / "run.log").is_file()


def test_the_child_runs_this_checkout(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    assert lib.run_py_env()["PYTHONPATH"].split(":") == [str(lib.ROOT), "/elsewhere"]
    assert lib.shown_path(lib.ROOT / "experiments" / "lib.py") == "experiments/lib.py"
    assert lib.reproduce_command("experiments.x", ["--quick", "a b"]) == "python -m experiments.x --quick 'a b'"


def test_write_results_creates_the_folder_and_ends_with_one_newline(tmp_path: Path):
    path = lib.write_results(tmp_path / "a" / "b.md", "text\n\n")
    assert path.read_text() == "text\n"


def test_spread_score_prefers_the_spread_over_seed_sets_then_the_standard_error():
    several = {"fd": {"value": 5.0, "std_over_seeds": 0.4, "std_error": 0.1, "floor": 2.9}}
    one = {"fd": {"value": 5.0, "std_error": 0.1, "floor": None}, "kid": {"value": 0.2}}
    assert lib.spread_score(several) == (5.0, 0.4, 2.9)
    assert lib.spread_score(one) == (5.0, 0.1, None)
    assert lib.spread_score(one, "kid") == (0.2, 0.0, None)

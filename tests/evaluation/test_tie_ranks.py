"""EDM2's reporting over evaluator.seeds: the mean with its std and the minimum, and rows closer than their standard
errors marked as ties instead of ranked."""

from __future__ import annotations

import math

from diffusion.evaluation.evaluators import MetricValue
from diffusion.evaluation.results import Rank, StepsRow, format_steps_table, tie_ranks


def test_rows_closer_than_their_standard_errors_share_a_rank():
    # se of the difference: sqrt(0.1^2 + 0.1^2) = 0.141; 1.1 - 1.0 = 0.1 ties, 2.0 does not.
    ranks = tie_ranks([1.1, 2.0, 1.0], [0.1, 0.1, 0.1])
    assert [r.label for r in ranks] == ["1=", "3", "1="]


def test_ties_are_judged_against_the_leader_and_do_not_chain():
    # se of a difference 0.085: 1.08 ties 1.00; 1.16 is 0.16 from the leader, so it is third, not tied.
    ranks = tie_ranks([1.0, 1.08, 1.16], [0.06, 0.06, 0.06])
    assert [r.label for r in ranks] == ["1=", "1=", "3"]


def test_without_standard_errors_or_values_rows_are_ranked_plainly():
    assert [r.label for r in tie_ranks([3.0, 1.0, 2.0], [None, None, None])] == ["3", "1", "2"]
    assert tie_ranks([math.nan, 1.0], [0.1, 0.1]) == [Rank(None), Rank(1)]
    assert [r.label for r in tie_ranks([0.9, 0.5], [0.01, 0.01], higher_is_better=True)] == ["1", "2"]


def _seed_row(steps: int, values: list[float]) -> StepsRow:
    per_seed = [{"fd": MetricValue(v, floor=0.5, floor_std=0.1)} for v in values]
    mean = sum(values) / len(values)
    std_error = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 / len(values) ** 0.5
    return StepsRow("ddim", steps, {"fd": MetricValue(mean, floor=0.5, std_error=std_error)}, 0.01, steps, per_seed)


def test_step_table_shows_mean_std_min_and_marks_the_best_and_its_ties():
    rows = [_seed_row(10, [3.0, 3.2, 3.4]), _seed_row(20, [2.0, 2.1, 2.2]), _seed_row(50, [2.05, 2.15, 2.25])]
    table = format_steps_table(rows).splitlines()
    assert "3.2 ± 0.2, min 3 (floor 0.5" in table[2] and not table[2].endswith(("best |", "tie |"))
    assert "2.1 ± 0.1, min 2 (floor 0.5" in table[3] and " tie |" in table[3]  # 2.1 and 2.15: a tie for best
    assert "2.15 ± 0.1, min 2.05" in table[4] and " tie |" in table[4]
    single = [StepsRow("ddim", 10, {"fd": MetricValue(3.0, std_error=0.1)}, 0.01),
              StepsRow("ddim", 20, {"fd": MetricValue(2.0, std_error=0.1)}, 0.01)]
    assert "best" not in format_steps_table(single) and "3 ± 0.1" in format_steps_table(single)

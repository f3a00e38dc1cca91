"""``task=evaluate evaluator.likelihood=true evaluator.straightness=true`` on a tiny flow run: the NLL (nats for points,
bits/dim for images) and S(Z) land in eval.json beside the evaluator's scores; image data that is not 8-bit without
``evaluator.dequantization``, straightness of a run that is not a flow, and either key with another task are one
line naming the key, exit 2, nothing written."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from runs import ONE_EPOCH_MOONS, TINY_DIGITS, main_in_process

from diffusion.data.base import BaseData, DataSplits
from diffusion.runtime.checks import ConfigError
from diffusion.tasks.ode_scores import level_width

TINY_FLOW = [*ONE_EPOCH_MOONS, "method=flow_matching", "evaluator=points", "evaluator.num_samples=16"]
SCORES = ["evaluator.likelihood=true", "evaluator.likelihood_samples=8", "evaluator.straightness=true",
          "evaluator.straightness_samples=16", "evaluator.straightness_steps=10"]


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("flow") / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert main_in_process(monkeypatch, *TINY_FLOW, f"hydra.run.dir={run_dir}") == 0
    return run_dir


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    """A Gaussian diffusion on digits, whose 17 ink levels are not 8-bit."""
    run_dir = tmp_path_factory.mktemp("digits") / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert main_in_process(monkeypatch, *TINY_DIGITS, "trainer.epochs=1", f"hydra.run.dir={run_dir}") == 0
    return run_dir


def test_evaluate_reports_the_nll_in_nats_and_the_straightness_of_a_flow(flow_run, tmp_path, monkeypatch):
    out = tmp_path / "evaluated"
    assert main_in_process(monkeypatch, "task=evaluate", f"run_dir={flow_run}", "evaluator.num_samples=16",
                           *SCORES, f"hydra.run.dir={out}") == 0
    scored = json.loads((out / "eval.json").read_text())
    nll, straight = scored["nll"], scored["straightness"]
    assert nll["unit"] == "nats" and nll["divergence"] == "exact" and nll["num_points"] == 8
    assert nll["dequantization"] is None and nll["nfe"] > 6 and nll["hutchinson_std_error"] == 0
    assert math.isfinite(nll["value"]) and nll["std_error"] > 0
    assert straight["value"] > 0 and math.isfinite(straight["std_error"]) and straight["steps"] == 10
    assert "fd" in scored or any(isinstance(v, dict) and "floor" in v for v in scored.values())  # evaluator's kept
    log = (out / "train.log").read_text()
    assert "negative log-likelihood of 8 validation points" in log and "straightness S(Z)" in log


def test_hutchinson_probes_report_their_standard_error(flow_run, tmp_path, monkeypatch):
    out = tmp_path / "probes"
    assert main_in_process(monkeypatch, "task=evaluate", f"run_dir={flow_run}", "evaluator=none",
                           "evaluator.likelihood=true", "evaluator.likelihood_samples=4",
                           "evaluator.hutchinson_samples=3",
                           f"hydra.run.dir={out}") == 0
    nll = json.loads((out / "eval.json").read_text())["nll"]  # evaluator=none: eval.json holds the NLL alone
    assert nll["divergence"] == "hutchinson" and nll["hutchinson_std_error"] > 0 and math.isfinite(nll["value"])


def test_bad_likelihood_or_straightness_requests_are_one_line_and_write_nothing(flow_run, digits_run, tmp_path,
                                                                                monkeypatch, capsys):
    cases = [
        (["task=evaluate", f"run_dir={digits_run}", "evaluator.likelihood=true"], "evaluator.dequantization"),
        (["task=evaluate", f"run_dir={digits_run}", "evaluator.straightness=true"], "evaluator.straightness"),
        (["task=evaluate", f"run_dir={flow_run}", "evaluator.likelihood=true", "evaluator.hutchinson_samples=-1"],
         "evaluator.hutchinson_samples"),
        (["task=sample", f"run_dir={flow_run}", "evaluator.straightness=true"], "evaluator.straightness"),
    ]
    for overrides, key in cases:
        capsys.readouterr()
        out = tmp_path / "refused"
        assert main_in_process(monkeypatch, *overrides, f"hydra.run.dir={out}") == 2, overrides
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and error[0].startswith("error: ") and key in error[0], error
        assert not out.exists()


def test_a_given_level_width_gives_bits_per_dimension_for_a_diffusion_run(digits_run, tmp_path, monkeypatch):
    out = tmp_path / "bits"
    assert main_in_process(monkeypatch, "task=evaluate", f"run_dir={digits_run}", "evaluator.likelihood=true",
                           "evaluator.likelihood_samples=2", "evaluator.hutchinson_samples=1",
                           "evaluator.dequantization=0.125", "evaluator.num_samples=8", f"hydra.run.dir={out}") == 0
    nll = json.loads((out / "eval.json").read_text())["nll"]
    assert nll["unit"] == "bits/dim" and nll["dequantization"] == 0.125 and math.isfinite(nll["value"])


class Images(BaseData):
    kind = "image"

    def __init__(self, pixels: torch.Tensor) -> None:
        super().__init__()
        self.pixels = pixels

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.pixels.shape[1:])

    def _load(self) -> DataSplits:
        return DataSplits(self.pixels, self.pixels)


def test_8bit_images_are_dequantized_over_one_level_and_other_levels_need_the_width():
    levels = torch.randint(0, 256, (4, 1, 2, 2), generator=torch.Generator().manual_seed(0)).float()
    assert level_width(None, Images(levels / 127.5 - 1)) == pytest.approx(2 / 255)
    assert level_width(0.125, Images(levels / 8 - 1)) == 0.125
    with pytest.raises(ConfigError, match="evaluator.dequantization"):
        level_width(None, Images(torch.tensor([0.0, 0.5, 1.0]).reshape(3, 1, 1, 1) / 16 * 2 - 1 + 0.01))

"""``python -m experiments.tools.denoising_error``: a run's denoising error per noise level, paired across runs."""

from __future__ import annotations

import math

import pytest

from diffusion.methods import EDM, GaussianDiffusion
from diffusion.methods.schedules import cosine_betas
from experiments.tools import denoising_error
from runs import TINY_MOONS, main_in_process


@pytest.fixture(scope="module")
def moons_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("moons") / "run"
    with pytest.MonkeyPatch.context() as patch:
        assert main_in_process(patch, *TINY_MOONS, f"hydra.run.dir={run_dir}") == 0
    return run_dir


def table_rows(text: str) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| sigma")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_the_same_run_twice_scores_the_same_at_every_level_and_the_error_grows_with_the_noise(moons_run, tmp_path):
    out = tmp_path / "errors.md"
    assert denoising_error.main([str(moons_run), str(moons_run), "--levels", "4", "--samples", "64", "--threads", "1",
                                 "--out", str(out)]) == 0
    rows = table_rows(out.read_text())
    assert len(rows) == 4
    sigmas = [float(row[0]) for row in rows]
    assert sigmas == sorted(sigmas) and len(set(sigmas)) == 4
    assert all(row[2].endswith("(1.00x)") for row in rows)  # one noise draw shared by the runs: paired
    first = [float(row[1]) for row in rows]
    assert first[0] < first[-1]  # a trained denoiser: nearly exact at the lowest level, the data's spread at the top
    assert "Reproduce: `python -m experiments.tools.denoising_error" in out.read_text()


def test_levels_are_the_schedule_at_band_centres_or_log_spaced_without_one():
    gaussian = GaussianDiffusion(schedule=cosine_betas, num_timesteps=100)
    levels = denoising_error.noise_levels(gaussian, 4)
    schedule = gaussian.schedule_sigmas().tolist()
    assert levels == [schedule[12], schedule[37], schedule[62], schedule[87]]
    edm = EDM()
    levels = denoising_error.noise_levels(edm, 3)
    assert edm.sigma_min < levels[0] < levels[1] < levels[2] < edm.sigma_max
    assert math.isclose(levels[1], math.sqrt(edm.sigma_min * edm.sigma_max))


def test_a_folder_without_checkpoints_is_one_line_and_exit_2(tmp_path, capsys):
    assert denoising_error.main([str(tmp_path), "--threads", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and str(tmp_path) in err

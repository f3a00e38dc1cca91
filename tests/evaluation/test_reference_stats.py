"""``task=reference_stats`` through run.py, and the bad inputs of the pretrained feature networks: one line
naming the key or file, exit 2, nothing written."""

from __future__ import annotations

import numpy as np
import pytest
from runs import main_in_process, run_py
from tiny_networks import save_tiny_dinov2

from diffusion.data import DigitsData
from diffusion.evaluation.dinov2 import DINOv2Evaluator
from diffusion.evaluation.feature_stats import feature_statistics
from diffusion.runtime.checks import ConfigError

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("dinov2")
    return folder, save_tiny_dinov2(folder)


def _dinov2(folder, digest: str, tmp_path) -> list[str]:
    return ["task=reference_stats", "evaluator=dinov2", f"evaluator.weights={folder}",
            f"evaluator.weights_sha256={digest}", "evaluator.resize=28", "evaluator.reference_size=64",
            "evaluator.num_samples=16", "evaluator.floor_draws=2", f"evaluator.floor_cache_dir={tmp_path / 'floors'}"]


def test_reference_stats_writes_mu_and_sigma_of_the_training_features(tiny_dinov2, tmp_path, monkeypatch, capsys):
    folder, digest = tiny_dinov2
    run_dir = tmp_path / "refs"
    assert main_in_process(monkeypatch, f"hydra.run.dir={run_dir}", *_dinov2(folder, digest, tmp_path)) == 0
    assert f"evaluator.reference_stats={run_dir / 'reference_stats.npz'}" in capsys.readouterr().out
    with np.load(run_dir / "reference_stats.npz", allow_pickle=False) as archive:
        assert sorted(archive.files) == ["mu", "sigma"]
        mu, sigma = archive["mu"], archive["sigma"]
    evaluator = DINOv2Evaluator(weights=str(folder), weights_sha256=digest, resize=28, reference_size=64,
                                num_samples=16, floor_draws=2, floor_cache_dir=str(tmp_path / "floors"))
    evaluator.prepare(DigitsData())
    expected = feature_statistics(evaluator.reference_features())
    assert mu.shape == (16,) and sigma.shape == (16, 16)
    assert np.allclose(mu, expected.mu) and np.allclose(sigma, expected.sigma)


def test_weights_of_another_digest_are_one_line_exit_2_nothing_written(tiny_dinov2, tmp_path):
    folder, digest = tiny_dinov2
    run_dir = tmp_path / "refs"
    result = run_py(tmp_path, f"hydra.run.dir={run_dir}", *_dinov2(folder, "0" * 64, tmp_path))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: evaluator.weights={folder / 'model.safetensors'}: sha256")
    assert not run_dir.exists() and not (tmp_path / "floors").exists()


def test_bad_reference_file_and_no_feature_space_exit_2(tiny_dinov2, tmp_path, monkeypatch, capsys):
    folder, digest = tiny_dinov2
    np.savez(tmp_path / "mu_only.npz", mu=np.zeros(16))
    run_dir = tmp_path / "run"
    bad_file = [*_dinov2(folder, digest, tmp_path), f"evaluator.reference_stats={tmp_path / 'mu_only.npz'}"]
    assert main_in_process(monkeypatch, f"hydra.run.dir={run_dir}", *bad_file) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "evaluator.reference_stats: " in err[0] and "mu_only.npz' has no sigma" in err[0]
    assert main_in_process(monkeypatch, f"hydra.run.dir={run_dir}", "task=reference_stats", "evaluator=none") == 2
    assert "evaluator=none" in capsys.readouterr().err and not run_dir.exists()
    absent = ["task=reference_stats", "evaluator=cmmd", f"evaluator.weights={tmp_path / 'absent'}"]
    assert main_in_process(monkeypatch, f"hydra.run.dir={run_dir}", *absent) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "absent") in err[0] and not run_dir.exists()


def test_a_directory_without_config_json_is_refused(tiny_dinov2, tmp_path):
    folder, digest = tiny_dinov2
    (tmp_path / "loose").mkdir()
    (tmp_path / "loose" / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    evaluator = DINOv2Evaluator(weights=str(tmp_path / "loose"), weights_sha256=digest)
    with pytest.raises(ConfigError, match=r"^evaluator\.weights=.*loose: no config\.json beside model\.safetensors"):
        evaluator.prepare(DigitsData())

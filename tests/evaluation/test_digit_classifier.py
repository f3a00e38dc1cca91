"""The shipped digit classifier loads, is accurate on the held-out split, and exposes documented shapes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from diffusion.data.digits import DigitsData
from diffusion.evaluation.classifier import DigitClassifier, load_digit_classifier


@pytest.fixture(scope="module")
def val_split() -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out digits of the shared split ``train_val_indices(1797, 0.1, 0)``: ``(180, 1, 8, 8)`` in [-1, 1]."""
    splits = DigitsData(image_size=8, val_fraction=0.1, split_seed=0).load()
    return splits.val, splits.val_labels


@pytest.fixture(scope="module")
def classifier() -> DigitClassifier:
    return load_digit_classifier()


def test_shipped_weights_reach_target_held_out_accuracy(classifier: DigitClassifier, val_split) -> None:
    x, y = val_split
    with torch.no_grad():
        accuracy = (classifier(x).argmax(dim=1) == y).double().mean().item()
    assert accuracy >= 0.985


def test_loaded_classifier_is_frozen_and_in_eval_mode(classifier: DigitClassifier) -> None:
    assert not classifier.training
    assert not any(p.requires_grad for p in classifier.parameters())


def test_feature_and_logit_shapes(classifier: DigitClassifier, val_split) -> None:
    x, _ = val_split
    features = classifier.features(x[:16])
    assert features.shape == (16, classifier.feature_dim)
    assert 64 <= classifier.feature_dim <= 128
    assert classifier(x[:16]).shape == (16, 10)


def test_other_image_sizes_are_resized_to_8x8(classifier: DigitClassifier, val_split) -> None:
    x, y = val_split
    x16 = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        assert classifier.features(x16).shape == (len(x), classifier.feature_dim)
        accuracy = (classifier(x16).argmax(dim=1) == y).double().mean().item()
    assert accuracy >= 0.95
    with pytest.raises(ValueError, match="N, 1, H, W"):
        classifier(torch.zeros(2, 3, 8, 8))


def test_missing_weights_name_the_retraining_script(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="train_digit_classifier.py"):
        load_digit_classifier(path=tmp_path / "absent.safetensors")

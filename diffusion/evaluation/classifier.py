"""A small CNN trained on handwritten digits: class predictions and penultimate features for the evaluator.

Its features play Inception's role in FID/KID. The shipped weights (8x8 digits, 28x28 MNIST) are rebuilt bit for
bit by experiments/tools/train_digit_classifier.py and train_mnist_classifier.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

DIGITS_IMAGE_SIZE = 8
NUM_DIGIT_CLASSES = 10
FEATURE_DIM = 128
MNIST_IMAGE_SIZE = 28
WEIGHTS_PATH = Path(__file__).resolve().parent / "weights" / "digit_classifier.safetensors"
MNIST_WEIGHTS_PATH = Path(__file__).resolve().parent / "weights" / "mnist_classifier.safetensors"
RETRAIN_COMMAND = "python experiments/tools/train_digit_classifier.py"
MNIST_RETRAIN_COMMAND = "python experiments/tools/train_mnist_classifier.py"
_LINEAR = 11  # index of the Linear layer in DigitClassifier.trunk: its input width gives the image size


def resize_to_digits(x: torch.Tensor, size: int = DIGITS_IMAGE_SIZE) -> torch.Tensor:
    """Images ``(N, 1, H, W)`` in ``[-1, 1]`` at the classifier's ``(N, 1, size, size)`` (antialiased bilinear), so a
    model of another size is judged on the grid the classifier was trained on.
    """
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"digit classifier expects images of shape (N, 1, H, W), got {tuple(x.shape)}")
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


class DigitClassifier(nn.Module):
    """Two conv stages (each halving the side: 8 -> 4 -> 2, or 28 -> 14 -> 7), a ``feature_dim``-wide hidden layer
    (what :meth:`features` returns), then 10 logits.
    """

    def __init__(
        self, feature_dim: int = FEATURE_DIM, dropout: float = 0.3, image_size: int = DIGITS_IMAGE_SIZE
    ) -> None:
        super().__init__()
        if image_size % 4:
            raise ValueError(f"DigitClassifier needs an image size divisible by 4, got {image_size}")
        self.feature_dim, self.image_size = feature_dim, image_size
        side = image_size // 4
        self.trunk = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (N, 32, S/2, S/2)
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (N, 64, S/4, S/4)
            nn.Flatten(),  # (N, 64 * (S/4)^2)
            nn.Linear(64 * side * side, feature_dim),
            nn.ReLU(),
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, NUM_DIGIT_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations ``(N, feature_dim)`` of images ``(N, 1, H, W)`` in ``[-1, 1]``."""
        return self.trunk(resize_to_digits(x, self.image_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(N, 10)`` of images ``(N, 1, H, W)`` in ``[-1, 1]``."""
        return self.head(self.dropout(self.features(x)))


def load_digit_classifier(device: str | torch.device = "cpu", path: str | Path | None = None) -> DigitClassifier:
    """The shipped classifier (or the one at ``path``) in eval mode, gradients off; a missing file names the
    script that rebuilds it.
    """
    weights = Path(path) if path is not None else WEIGHTS_PATH
    if not weights.is_file():
        command = MNIST_RETRAIN_COMMAND if weights.name == MNIST_WEIGHTS_PATH.name else RETRAIN_COMMAND
        raise FileNotFoundError(f"digit classifier weights not found at {weights}; rebuild them with `{command}`")
    state = load_file(str(weights), device="cpu")
    feature_dim = state["head.weight"].shape[1]
    side = math.isqrt(state[f"trunk.{_LINEAR}.weight"].shape[1] // 64)  # Linear(64 * side^2, feature_dim)
    model = DigitClassifier(feature_dim=feature_dim, image_size=4 * side)
    model.load_state_dict(state)
    model.requires_grad_(False)
    return model.eval().to(device)

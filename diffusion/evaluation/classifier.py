"""A small CNN trained on sklearn's 8x8 digits: class predictions and penultimate features for the evaluator.

The features play the role Inception-v3's pool features play in FID/KID (Heusel et al. 2017; Binkowski et al.
2018), scaled down to the digits data set. The weights ship with the package and are rebuilt, bit for bit on the
same machine, by ``experiments/train_digit_classifier.py``; nothing is ever downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

DIGITS_IMAGE_SIZE = 8
NUM_DIGIT_CLASSES = 10
FEATURE_DIM = 128
WEIGHTS_PATH = Path(__file__).resolve().parent / "weights" / "digit_classifier.safetensors"
RETRAIN_COMMAND = "python experiments/train_digit_classifier.py"


def resize_to_digits(x: torch.Tensor) -> torch.Tensor:
    """Bring images ``(N, 1, H, W)`` in ``[-1, 1]`` to the classifier's ``(N, 1, 8, 8)``.

    Other sizes are resized with antialiased bilinear interpolation, so a 16x16 or 32x32 model is judged on the
    same 8x8 grid the classifier was trained on; 8x8 input is returned unchanged.

    Raises:
        ValueError: if ``x`` is not a 4-D tensor with one channel.
    """
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"digit classifier expects images of shape (N, 1, H, W), got {tuple(x.shape)}")
    if x.shape[-2:] == (DIGITS_IMAGE_SIZE, DIGITS_IMAGE_SIZE):
        return x
    size = (DIGITS_IMAGE_SIZE, DIGITS_IMAGE_SIZE)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


class DigitClassifier(nn.Module):
    """Two conv stages (8x8 -> 4x4 -> 2x2) and a ``feature_dim``-wide hidden layer, then 10 logits.

    Args:
        feature_dim: width of the penultimate layer returned by :meth:`features`.
        dropout: dropout before the logits (training only; inactive in eval mode).
    """

    def __init__(self, feature_dim: int = FEATURE_DIM, dropout: float = 0.3) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.trunk = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (N, 32, 4, 4)
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (N, 64, 2, 2)
            nn.Flatten(),  # (N, 256)
            nn.Linear(64 * 2 * 2, feature_dim),
            nn.ReLU(),
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, NUM_DIGIT_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations ``(N, feature_dim)`` of images ``(N, 1, H, W)`` in ``[-1, 1]``.

        Raises:
            ValueError: if ``x`` is not ``(N, 1, H, W)``.
        """
        return self.trunk(resize_to_digits(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(N, 10)`` of images ``(N, 1, H, W)`` in ``[-1, 1]``.

        Raises:
            ValueError: if ``x`` is not ``(N, 1, H, W)``.
        """
        return self.head(self.dropout(self.features(x)))


def load_digit_classifier(device: str | torch.device = "cpu", path: str | Path | None = None) -> DigitClassifier:
    """The shipped classifier (or the one saved at ``path``), in eval mode with gradients off, on ``device``.

    Raises:
        FileNotFoundError: if the weights file is missing; the message names the script that rebuilds it.
    """
    weights = Path(path) if path is not None else WEIGHTS_PATH
    if not weights.is_file():
        raise FileNotFoundError(
            f"digit classifier weights not found at {weights}; rebuild them with `{RETRAIN_COMMAND}`"
        )
    state = load_file(str(weights), device="cpu")
    feature_dim = state["head.weight"].shape[1]
    model = DigitClassifier(feature_dim=feature_dim)
    model.load_state_dict(state)
    model.requires_grad_(False)
    return model.eval().to(device)

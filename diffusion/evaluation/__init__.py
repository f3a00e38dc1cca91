"""Sample-quality evaluation: a shipped digit classifier (predictions and features) and pure metric functions."""

from diffusion.evaluation.classifier import DigitClassifier, load_digit_classifier, resize_to_digits
from diffusion.evaluation.metrics import (
    KernelInceptionDistance,
    class_coverage,
    class_histogram,
    class_kl,
    energy_distance,
    frechet_distance,
    frechet_distance_from_features,
    kernel_inception_distance,
    median_heuristic_bandwidth,
    mmd_rbf,
    sliced_wasserstein,
)

__all__ = [
    "DigitClassifier",
    "KernelInceptionDistance",
    "class_coverage",
    "class_histogram",
    "class_kl",
    "energy_distance",
    "frechet_distance",
    "frechet_distance_from_features",
    "kernel_inception_distance",
    "load_digit_classifier",
    "median_heuristic_bandwidth",
    "mmd_rbf",
    "resize_to_digits",
    "sliced_wasserstein",
]

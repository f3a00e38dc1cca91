"""Scores of a sample's class histogram (labels from a classifier) against the data's: coverage and KL.

Label vectors are 1-D integer ``(N,)``; results are Python floats computed in float64.
"""

from __future__ import annotations

import torch

from diffusion.evaluation.metrics import ArrayLike
from diffusion.runtime.checks import check_float, check_int


def class_histogram(labels: ArrayLike, num_classes: int) -> torch.Tensor:
    """Class frequencies ``(num_classes,)`` (float64, summing to 1) of integer labels ``(N,)`` in ``[0, num_classes)``."""
    check_int(num_classes, "num_classes", minimum=1)
    labels = torch.as_tensor(labels).detach().cpu()
    if labels.ndim != 1 or labels.numel() == 0 or labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must be a non-empty 1-D integer vector, got {labels.dtype} {tuple(labels.shape)}")
    labels = labels.long()
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got range [{labels.min()}, {labels.max()}]")
    return torch.bincount(labels, minlength=num_classes).to(torch.float64) / len(labels)


def class_coverage(pred: ArrayLike, num_classes: int, min_fraction: float = 0.01) -> float:
    """Share of the ``num_classes`` classes that receive at least ``min_fraction`` of the predicted labels
    (mode collapse onto k classes gives k / num_classes).
    """
    check_float(min_fraction, "class_coverage.min_fraction", 0.0, 1.0)
    histogram = class_histogram(pred, num_classes)
    return (histogram >= min_fraction).double().mean().item()


def _reference_histogram(reference: ArrayLike, num_classes: int) -> torch.Tensor:
    """Labels (integer dtype) become a histogram; a float vector of length num_classes is normalised counts."""
    reference = torch.as_tensor(reference).detach().cpu()
    if not reference.is_floating_point():
        return class_histogram(reference, num_classes)
    reference = reference.to(torch.float64)
    if reference.shape != (num_classes,) or (reference < 0).any() or not reference.sum() > 0:
        shape = tuple(reference.shape)
        raise ValueError(f"a float reference must be a non-negative histogram of shape ({num_classes},), got {shape}")
    return reference / reference.sum()


def class_kl(pred: ArrayLike, reference: ArrayLike, num_classes: int, eps: float = 1e-6) -> float:
    """KL(p || q) = sum_k p_k log(p_k / q_k) of the sample class histogram p against the data's q.
    Both are smoothed, ``p <- (p + eps) / (1 + num_classes * eps)``, so a missing class costs ``p_k log(p_k / eps)``,
    not infinity. ``reference``: labels ``(M,)`` or a histogram ``(num_classes,)``.
    """
    check_float(eps, "class_kl.eps", 0.0, inclusive=False)
    p = class_histogram(pred, num_classes)
    q = _reference_histogram(reference, num_classes)
    p = (p + eps) / (1 + num_classes * eps)
    q = (q + eps) / (1 + num_classes * eps)
    return max((p * (p / q).log()).sum().item(), 0.0)

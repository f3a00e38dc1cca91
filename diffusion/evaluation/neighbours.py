"""Nearest-neighbour scores of generated features against real ones: improved precision and recall
(Kynkaanniemi et al. 2019, "Improved Precision and Recall Metric for Assessing Generative Models", Sec. 3) and
the share of near-copies of training items."""

from __future__ import annotations

from typing import NamedTuple

import torch

from diffusion.evaluation.metrics import BLOCK, ArrayLike, as_point_clouds
from diffusion.runtime.checks import check_float, check_int


class PrecisionRecall(NamedTuple):
    """Improved precision and recall (Kynkaanniemi et al. 2019): shares in ``[0, 1]``, higher is better."""

    precision: float
    recall: float


class Memorization(NamedTuple):
    """``score``: share of samples closer to their nearest training item than ``threshold``, the low quantile of
    held-out items' nearest-training distances (what a fresh draw from the data distribution reaches)."""

    score: float
    threshold: float


def kth_neighbour_distances(x: torch.Tensor, k: int = 3) -> torch.Tensor:
    """Distance from each row of ``x`` ``(N, D)`` float64 to its ``k``-th nearest other row ``(N,)``: the radii of
    the k-NN manifold estimate."""
    distances = []
    for block in x.split(BLOCK):
        dist = torch.cdist(block, x)  # (block, N); each row holds its own 0
        distances.append(dist.topk(k + 1, dim=1, largest=False).values[:, k])  # index 0 is the row itself
    return torch.cat(distances)


def _nearest_distances(queries: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Distance from each query ``(N, D)`` to its nearest item ``(M, D)``: ``(N,)``."""
    return torch.cat([torch.cdist(block, items).min(dim=1).values for block in queries.split(BLOCK)])


def _share_inside_balls(queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> float:
    """Share of queries within ``radii[j]`` of some centre ``j`` (the k-NN manifold estimate of Kynkaanniemi 2019)."""
    inside = sum(int((torch.cdist(block, centres) <= radii).any(dim=1).sum()) for block in queries.split(BLOCK))
    return inside / len(queries)


def precision_recall(real: ArrayLike, fake: ArrayLike, k: int = 3) -> PrecisionRecall:
    """Improved precision and recall of ``fake`` against ``real`` features (Kynkaanniemi et al. 2019, Sec. 3).

    Each set's manifold is the union of balls around its points of radius the distance to the ``k``-th nearest
    neighbour in the same set; precision is the share of fake points in the real manifold, recall the reverse.
    """
    k = check_int(k, "k", minimum=1)
    real, fake = as_point_clouds(real, fake, min_points=k + 1)
    return _precision_recall(real, kth_neighbour_distances(real, k), fake, k)


def _precision_recall(real: torch.Tensor, real_radii: torch.Tensor, fake: torch.Tensor, k: int) -> PrecisionRecall:
    precision = _share_inside_balls(fake, real, real_radii)
    recall = _share_inside_balls(real, fake, kth_neighbour_distances(fake, k))
    return PrecisionRecall(precision, recall)


def memorization_threshold(train: ArrayLike, heldout: ArrayLike, quantile: float = 0.01) -> float:
    """The ``quantile`` of held-out items' ``min_j ||h - train_j||``: how close a fresh draw of the data comes."""
    quantile = check_float(quantile, "quantile", 0.0, 1.0, inclusive=False)
    heldout, train = as_point_clouds(heldout, train)
    return torch.quantile(_nearest_distances(heldout, train), quantile).item()


def memorization_score(
    samples: ArrayLike, train: ArrayLike, heldout: ArrayLike, quantile: float = 0.01
) -> Memorization:
    """Share of ``samples`` closer to a training item than almost any fresh data point comes.

    Threshold: :func:`memorization_threshold` of ``train`` and ``heldout``; a generalising model scores about
    ``quantile``.
    """
    threshold = memorization_threshold(train, heldout, quantile)
    samples, train = as_point_clouds(samples, train)
    return _memorization(samples, train, threshold)


def _memorization(samples: torch.Tensor, train: torch.Tensor, threshold: float) -> Memorization:
    return Memorization((_nearest_distances(samples, train) < threshold).double().mean().item(), threshold)


class RealNeighbours(NamedTuple):
    """One real split made ready for scoring many sample sets (chunks, bootstrap resamples, seeds): the checked
    float64 ``reference`` rows, their k-NN ``radii`` and the memorization ``threshold``, computed once (the
    R x R distances are most of the neighbour metrics' cost). Build it with :func:`real_neighbours`."""

    reference: torch.Tensor  # (R, D) float64
    radii: torch.Tensor  # (R,)
    threshold: float
    k: int

    def precision_recall(self, fake: ArrayLike) -> PrecisionRecall:
        """:func:`precision_recall` of ``fake`` ``(N, D)`` against the reference."""
        fake, _ = as_point_clouds(fake, self.reference[: self.k + 1], min_points=self.k + 1)
        return _precision_recall(self.reference, self.radii, fake, self.k)

    def memorization(self, samples: ArrayLike) -> Memorization:
        """:func:`memorization_score` of ``samples`` ``(N, D)`` against the reference."""
        samples, _ = as_point_clouds(samples, self.reference[:1])
        return _memorization(samples, self.reference, self.threshold)


def real_neighbours(train: ArrayLike, heldout: ArrayLike, k: int = 3, quantile: float = 0.01) -> RealNeighbours:
    """``train`` (the reference) with its :func:`kth_neighbour_distances` and the split's
    :func:`memorization_threshold`."""
    k = check_int(k, "k", minimum=1)
    train, heldout = as_point_clouds(train, heldout, min_points=k + 1)
    return RealNeighbours(train, kth_neighbour_distances(train, k), memorization_threshold(train, heldout, quantile), k)

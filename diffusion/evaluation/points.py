"""The points evaluator: generated 2-D point clouds scored against the training points."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from diffusion.data.base import BaseData
from diffusion.evaluation.evaluators import FeatureEvaluator, MetricValue, chunk_mean
from diffusion.evaluation.floors import RealSplit
from diffusion.evaluation.metrics import median_heuristic_bandwidth, point_cloud_reference
from diffusion.runtime.checks import ConfigError, check_float, check_int


class PointsEvaluator(FeatureEvaluator):
    """2-D point clouds scored directly: ``sliced_wasserstein``, ``mmd`` (RBF) and ``energy`` against training points,
    and with ``neighbour_metrics`` precision, recall and memorization in the plane.
    The RBF bandwidth is fixed once in :meth:`prepare`, so floors and samples share a kernel. Settings: see
    conf/evaluator/points.yaml.
    """

    METRICS = ("sliced_wasserstein", "mmd", "energy")

    def __init__(
        self,
        num_samples: int = 2000,
        every_n_epochs: int | None = None,
        sampler_steps: Sequence[int] | None = None,
        reference_size: int | None = 2000,
        seed: int = 0,
        neighbour_metrics: bool = False,
        num_projections: int = 256,
        bandwidth: float | None = None,
        seeds: Sequence[int] | None = None,
        floor_draws: int = 32,
        bootstrap: int = 50,
        floor_cache_dir: str | None = None,
    ) -> None:
        super().__init__(num_samples, every_n_epochs, sampler_steps, reference_size, seed, neighbour_metrics, seeds,
                         floor_draws=floor_draws, bootstrap=bootstrap, floor_cache_dir=floor_cache_dir)
        self.num_projections = check_int(num_projections, "evaluator.num_projections", minimum=1)
        if bandwidth is not None:
            check_float(bandwidth, "evaluator.bandwidth", 0.0, inclusive=False)
        self.bandwidth = bandwidth

    def _check_data(self, data: BaseData) -> None:
        if data.kind != "points":
            raise ConfigError(
                f"evaluator=points scores point clouds, got {data.kind} data; "
                "use evaluator=digits or evaluator=inception for images"
            )

    def _embed(self, samples: torch.Tensor) -> torch.Tensor:
        points = samples.detach().cpu().double()
        if points.ndim != 2:
            raise ValueError(f"PointsEvaluator expects samples of shape (N, D), got {tuple(points.shape)}")
        return points

    def _prepare_reference(self, data: BaseData) -> None:
        if self.bandwidth is None:
            self.bandwidth = median_heuristic_bandwidth(self._prepared_val(), self._prepared_reference())

    def _floor_key(self) -> dict[str, Any]:
        return {**super()._floor_key(), "num_projections": self.num_projections, "bandwidth": self.bandwidth}

    def _score(self, rows: torch.Tensor, n: int, real: RealSplit) -> dict[str, MetricValue]:
        reference = point_cloud_reference(real.reference, self.num_projections, self.seed, self.bandwidth)
        return {
            "sliced_wasserstein": chunk_mean(rows, n, reference.sliced_wasserstein),
            "mmd": chunk_mean(rows, n, reference.mmd),
            "energy": chunk_mean(rows, n, reference.energy),
            **self._neighbour_scores(rows, n, real),
        }

"""FD_DINOv2: the Fréchet distance in DINOv2 ViT-L/14 feature space, as EDM2 reports it beside FID.

Inception FID disagrees with human raters where DINOv2's features agree with them (Stein et al. 2023, "Exposing
flaws of generative model evaluation metrics"); EDM2 (Karras et al. 2024) reports FD_DINOv2 by that protocol:
uint8 RGB images, bicubic resize (antialiased) to 224 x 224, ImageNet mean/std, the network's CLS token after
its final layer norm (1,024-d), then FD = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)).
The network is ``transformers``' ``Dinov2Model`` (the weights of ``facebook/dinov2-large``), read from disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Unpack

import torch
from torch import nn

from diffusion.data.base import BaseData
from diffusion.evaluation.evaluators import FeatureOptions, MetricValue, chunk_mean
from diffusion.evaluation.feature_stats import load_feature_statistics
from diffusion.evaluation.floors import RealSplit
from diffusion.evaluation.metrics import frechet_distance, frechet_distance_from_features
from diffusion.evaluation.pretrained import PretrainedFeatureEvaluator, Resize, quiet_loading
from diffusion.runtime.checks import ConfigError

EDM2_SIZE = 224  # the side EDM2 (after dgm-eval) resizes every image to before DINOv2
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the statistics DINOv2 was trained with
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_dinov2(weights_file: Path) -> nn.Module:
    """``Dinov2Model`` saved beside ``weights_file`` (``config.json``), its weights from that file, never fetched."""
    from transformers import Dinov2Model

    with quiet_loading():
        return Dinov2Model.from_pretrained(str(weights_file.parent), local_files_only=True,
                                           use_safetensors=weights_file.suffix == ".safetensors")


class DINOv2Evaluator(PretrainedFeatureEvaluator):
    """``fd_dinov2`` (chunk mean at ``n`` with its standard error and floor) against the training images in DINOv2
    feature space; ``reference_stats`` (an ``.npz`` of ``mu``/``sigma`` in this space) adds ``fd_dinov2_reference``,
    all samples against that file, without a floor. Settings: see conf/evaluator/dinov2.yaml.
    """

    METRICS = ("fd_dinov2",)
    NAME = "dinov2"
    WEIGHTS_DIR = "dinov2-large"
    HF_MODEL = "facebook/dinov2-large"
    MEAN: ClassVar[tuple[float, float, float]] = IMAGENET_MEAN
    STD: ClassVar[tuple[float, float, float]] = IMAGENET_STD
    ANTIALIAS = True  # EDM2: interpolate(..., mode="bicubic", antialias=True)

    @property
    def metric_names(self) -> tuple[str, ...]:
        return (*super().metric_names, *(("fd_dinov2_reference",) if self.reference_stats is not None else ()))

    def __init__(
        self,
        weights: str | None = None,
        weights_sha256: str | None = None,
        resize: Resize = EDM2_SIZE,
        batch_size: int = 64,
        device: str = "cpu",
        reference_stats: str | None = None,
        **options: Unpack[FeatureOptions],
    ) -> None:
        super().__init__(weights, weights_sha256, resize, batch_size, device, **options)
        # Read now: a wrong path fails at start-up, not after training.
        self.reference_stats = None if reference_stats is None else load_feature_statistics(reference_stats)

    def _load(self, weights_file: Path) -> nn.Module:
        return load_dinov2(weights_file)

    def _prepare_reference(self, data: BaseData) -> None:
        width = self._prepared_reference().shape[1]
        if self.reference_stats is not None and len(self.reference_stats.mu) != width:
            raise ConfigError(f"evaluator.reference_stats holds {len(self.reference_stats.mu)}-d statistics; this "
                              f"DINOv2 gives {width}-d features (make them with task=reference_stats evaluator=dinov2)")

    def _forward(self, network: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        return network(pixel_values=pixels).pooler_output  # (B, 1024): the normed CLS token

    def _input_size(self, network: nn.Module, side: int) -> int | None:
        """DINOv2 interpolates its position embeddings to any size of at least one patch."""
        patch = int(network.config.patch_size)
        size = int(network.config.image_size) if self.resize == "auto" else self.resize
        if size is None and side < patch:
            raise ConfigError(f"evaluator.resize=null: the data's {side}x{side} images are smaller than DINOv2's "
                              f"{patch}x{patch} patch; set evaluator.resize={EDM2_SIZE} (EDM2's protocol)")
        if size is not None and size < patch:
            raise ConfigError(f"evaluator.resize={size} is smaller than DINOv2's {patch}x{patch} patch; use "
                              f"{EDM2_SIZE} (EDM2's protocol)")
        return size

    def compute(self) -> dict[str, MetricValue]:
        scores = super().compute()
        if scores and self.reference_stats is not None:
            rows = torch.cat(self._rows)  # (N, 1024): every sample, one Gaussian
            mu, sigma = self.reference_stats
            scores["fd_dinov2_reference"] = MetricValue(frechet_distance(rows.mean(0), torch.cov(rows.T), mu, sigma))
        return scores

    def _score(self, rows: torch.Tensor, n: int, real: RealSplit) -> dict[str, MetricValue]:
        fd = chunk_mean(rows, n, lambda chunk: frechet_distance_from_features(chunk, real.reference))
        return {"fd_dinov2": fd} | self._neighbour_scores(rows, n, real)

    def _floor_key(self) -> dict[str, Any]:
        return {**super()._floor_key(), "metric": "fd_dinov2"}

"""CMMD: the maximum mean discrepancy between CLIP image embeddings (Jayasumana et al. 2024, "Rethinking FID:
Towards a Better Evaluation Metric for Image Generation").

CLIP ViT-L/14 image embeddings (``CLIPVisionModelWithProjection``'s ``image_embeds``, L2-normalised) of images
resized bicubically to the network's input side (336 for the paper's ``openai/clip-vit-large-patch14-336``) and
normalised by CLIP's statistics; then, with the Gaussian RBF kernel k(x, y) = exp(-||x - y||^2 / (2 sigma^2)),
sigma = 10, and the paper's scale of 1000 (so the numbers read like FIDs),

    CMMD = 1000 [ sum_{i!=j} k(x_i,x_j) / (n(n-1)) + sum_{i!=j} k(y_i,y_j) / (m(m-1)) - 2 sum_{i,j} k(x_i,y_j) / (nm) ]

the unbiased estimator of MMD^2 (Gretton et al. 2012, Lemma 6): no Gaussian assumption, no bias in the sample
count, about 0 (either sign) for two sets from one distribution. The paper's code uses the V-statistic, which adds
about 1000 (1 - mean k) / n to each within-set term; at n = 1,000 the two differ by far less than the spread
between sample sets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from diffusion.evaluation.evaluators import MetricValue
from diffusion.evaluation.floors import RealSplit
from diffusion.evaluation.metrics import ArrayLike, as_point_clouds
from diffusion.evaluation.pretrained import PretrainedFeatureEvaluator, quiet_loading
from diffusion.runtime.checks import ConfigError

CMMD_SIGMA = 10.0  # the paper's RBF bandwidth for unit-norm CLIP embeddings
CMMD_SCALE = 1000.0  # the paper's scale factor
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's image statistics (its CLIPImageProcessor's)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _rbf_sum(x: torch.Tensor, y: torch.Tensor, sigma: float, same: bool) -> float:
    """sum over pairs of exp(-||x_i - y_j||^2 / (2 sigma^2)), without i = j when ``x`` is ``y`` (``same``)."""
    squared = (x.square().sum(1)[:, None] + y.square().sum(1)[None, :] - 2 * x @ y.T).clamp_(min=0)  # (N, M)
    kernel = torch.exp(-squared / (2 * sigma**2))
    return (kernel.sum() - kernel.diagonal().sum()).item() if same else kernel.sum().item()


def cmmd(x: ArrayLike, y: ArrayLike, sigma: float = CMMD_SIGMA, scale: float = CMMD_SCALE,
         y_term: float | None = None) -> float:
    """``scale`` x the unbiased MMD^2 of embeddings ``x`` ``(N, D)`` and ``y`` ``(M, D)`` under the RBF kernel of
    bandwidth ``sigma`` (see the module docstring); ``y_term``: the y-y mean of an earlier call, reused."""
    x, y = as_point_clouds(x, y, min_points=2)
    xx = within_set_mean(x, sigma)
    yy = within_set_mean(y, sigma) if y_term is None else y_term
    xy = _rbf_sum(x, y, sigma, same=False) / (len(x) * len(y))
    return scale * (xx + yy - 2 * xy)


def within_set_mean(x: torch.Tensor, sigma: float = CMMD_SIGMA) -> float:
    """The mean RBF kernel over pairs i != j of rows ``x`` ``(N, D)``: one within-set term of :func:`cmmd`."""
    return _rbf_sum(x, x, sigma, same=True) / (len(x) * (len(x) - 1))


def load_clip_vision(weights_file: Path) -> nn.Module:
    """``CLIPVisionModelWithProjection`` saved beside ``weights_file``, its weights from that file, never fetched
    (a whole CLIP checkpoint works: the text tower's weights are left out)."""
    from transformers import CLIPVisionModelWithProjection

    with quiet_loading():
        return CLIPVisionModelWithProjection.from_pretrained(str(weights_file.parent), local_files_only=True,
                                                             use_safetensors=weights_file.suffix == ".safetensors")


class CMMDEvaluator(PretrainedFeatureEvaluator):
    """``cmmd``: all samples against the training images in CLIP embedding space, with its floor (the held-out
    images at ``n``) and a bootstrap standard error. Settings: see conf/evaluator/cmmd.yaml.
    """

    METRICS = ("cmmd",)
    NAME = "cmmd"
    WEIGHTS_DIR = "clip-vit-large-patch14-336"
    HF_MODEL = "openai/clip-vit-large-patch14-336"
    MEAN: ClassVar[tuple[float, float, float]] = OPENAI_CLIP_MEAN
    STD: ClassVar[tuple[float, float, float]] = OPENAI_CLIP_STD
    ANTIALIAS = False  # the paper's code: interpolate(..., mode="bicubic")
    #: The reference rows last scored against and their within-set kernel mean, kept for the bootstrap resamples.
    _reference_term: tuple[torch.Tensor, float] | None = None

    def _load(self, weights_file: Path) -> nn.Module:
        return load_clip_vision(weights_file)

    def _forward(self, network: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        embeds = network(pixel_values=pixels).image_embeds  # (B, projection_dim)
        return embeds / embeds.norm(dim=-1, keepdim=True)

    def _input_size(self, network: nn.Module, side: int) -> int | None:
        """CLIP's position embeddings fit one input side, its ``config.image_size``."""
        native = int(network.config.image_size)
        size = native if self.resize == "auto" else self.resize
        if (size or side) != native:
            got = f"={size}" if size is not None else f"=null leaves the data's {side}x{side} images, but"
            raise ConfigError(f"evaluator.resize{got}: this CLIP takes {native}x{native} images; set "
                              "evaluator.resize=auto (the CMMD protocol)")
        return size

    def _score(self, rows: torch.Tensor, n: int, real: RealSplit) -> dict[str, MetricValue]:
        if self._reference_term is None or self._reference_term[0] is not real.reference:
            # The reference's own term is the same for the samples and every bootstrap resample: computed once.
            self._reference_term = (real.reference, within_set_mean(real.reference.double()))
        score = cmmd(rows, real.reference, y_term=self._reference_term[1])
        return {"cmmd": MetricValue(score)} | self._neighbour_scores(rows, n, real)

    def _floor_key(self) -> dict[str, Any]:
        return {**super()._floor_key(), "metric": "cmmd", "sigma": CMMD_SIGMA, "scale": CMMD_SCALE}


"""FID and KID on InceptionV3 features for image folders, only where the network's weights are already on disk.

The network is torchmetrics' FID Inception (2048-d pool features), loaded from a file whose sha256 is checked, since
another file's FIDs compare with no published number. Without torchmetrics or the weights the evaluator scores
nothing and says how to get them.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any, Unpack

import torch
from torch import nn

from diffusion.data.base import BaseData
from diffusion.evaluation.evaluators import FeatureEvaluator, FeatureOptions, MetricValue, frechet_and_kid
from diffusion.evaluation.feature_stats import load_feature_statistics
from diffusion.evaluation.floors import RealSplit
from diffusion.evaluation.metrics import frechet_distance
from diffusion.evaluation.pretrained import (
    check_sha256_option,
    check_weights_sha256,
    evaluator_device,
    to_uint8_rgb,
)
from diffusion.runtime.checks import ConfigError, check_int

log = logging.getLogger(__name__)

INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_WEIGHTS_FILE}"
# sha256 of torch-fidelity's v0.2.0 release file (its first 8 hex digits are the file name's suffix, torch hub's
# naming convention): a corrupt, truncated or different file would give FIDs that compare with nothing.
INCEPTION_WEIGHTS_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
INCEPTION_PACKAGES = {"torchmetrics": "torchmetrics>=1.0", "torch_fidelity": "torch-fidelity>=0.3"}


def default_inception_weights_path() -> Path:
    """Where torchmetrics (through torch-fidelity) looks for the FID Inception weights: the torch hub cache,
    ``$TORCH_HOME/hub/checkpoints/`` (``~/.cache/torch/hub/checkpoints/`` by default)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE


def inception_unavailable_reason(weights_path: str | Path | None = None) -> str | None:
    """``None`` when FID can be computed here without a download, else one line saying what is missing and
    how to get it (imports nothing, reads no file).
    """
    path = Path(weights_path).expanduser() if weights_path is not None else default_inception_weights_path()
    missing = [pip for module, pip in INCEPTION_PACKAGES.items() if importlib.util.find_spec(module) is None]
    if missing:
        what = f"{' and '.join(name.split('>')[0] for name in missing)} not installed"
    elif not path.is_file():
        what = f"weights file {path} not found"
    else:
        return None
    install = " ".join(f"'{pip}'" for pip in INCEPTION_PACKAGES.values())
    return (
        f"evaluator=inception: no FID/KID ({what}). To enable them: pip install {install} "
        f"(or pip install -e '.[inception]') and place {INCEPTION_WEIGHTS_FILE} (from {INCEPTION_WEIGHTS_URL}) "
        f"at {path}, or point evaluator.weights_path at it. Nothing is downloaded at run time; the run goes on "
        "without them."
    )


def load_inception(weights_path: str | Path) -> nn.Module:
    """The FID InceptionV3 of torchmetrics (2048-d features), weights read from ``weights_path``, never fetched."""
    from torchmetrics.image.fid import NoTrainInceptionV3

    return NoTrainInceptionV3(
        name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(weights_path)
    )


class InceptionEvaluator(FeatureEvaluator):
    """``fid`` and ``kid`` (with ``std_error``) on FID-Inception features, against the training images.

    ``reference_stats`` (pytorch-fid's ``.npz``) adds ``fid_reference``, the published protocol, without a floor.
    Settings: see conf/evaluator/inception.yaml.
    """

    METRICS = ("fid", "kid")

    @property
    def metric_names(self) -> tuple[str, ...]:
        return (*super().metric_names, *(("fid_reference",) if self.reference_stats is not None else ()))

    def __init__(
        self,
        weights_path: str | None = None,
        kid_subsets: int = 50,
        kid_subset_size: int = 1000,
        batch_size: int = 64,
        device: str = "cpu",
        reference_stats: str | None = None,
        weights_sha256: str | None = None,
        **options: Unpack[FeatureOptions],
    ) -> None:
        super().__init__(**options)
        self.weights_sha256 = check_sha256_option(weights_sha256) or INCEPTION_WEIGHTS_SHA256
        # Read now: a wrong path fails at start-up, not after training.
        self.reference_stats = None if reference_stats is None else load_feature_statistics(reference_stats)
        self.weights_path = Path(weights_path).expanduser() if weights_path else default_inception_weights_path()
        self.kid_subsets = check_int(kid_subsets, "evaluator.kid_subsets", minimum=1)
        self.kid_subset_size = check_int(kid_subset_size, "evaluator.kid_subset_size", minimum=2)
        self.batch_size = check_int(batch_size, "evaluator.batch_size", minimum=1)
        self.device = evaluator_device(device)
        self._network: nn.Module | None = None

    def prepare(self, data: BaseData) -> None:
        """Check for torchmetrics and the weights; with them, embed the reference and the floor, else log how to
        get them and score nothing from then on.
        """
        self._check_data(data)
        if self.unavailable_reason is None and self._network is None:
            self.unavailable_reason = inception_unavailable_reason(self.weights_path)
            if self.unavailable_reason is None:
                check_weights_sha256(self.weights_path, self.weights_sha256)
                try:
                    self._network = load_inception(self.weights_path).to(self.device).eval()
                except ImportError as error:  # e.g. torchvision missing under torch-fidelity
                    self.unavailable_reason = f"evaluator=inception: no FID/KID (import failed: {error})"
            if self.unavailable_reason is not None:
                log.warning(self.unavailable_reason)
        if self.unavailable_reason is None:
            super().prepare(data)

    def update(self, samples: torch.Tensor) -> None:
        """Embed a batch of generated images (nothing when FID is unavailable)."""
        if self.unavailable_reason is None:
            super().update(samples)

    def compute(self) -> dict[str, MetricValue]:
        """``fid`` and ``kid`` with floors; ``{}`` when FID is unavailable (see ``unavailable_reason``)."""
        if self.unavailable_reason is not None:
            return {}
        scores = super().compute()
        if self.reference_stats is not None:
            rows = torch.cat(self._rows)  # (N, 2048): every sample, one Gaussian
            mu, sigma = self.reference_stats
            scores["fid_reference"] = MetricValue(frechet_distance(rows.mean(0), torch.cov(rows.T), mu, sigma))
        return scores

    def _check_data(self, data: BaseData) -> None:
        if data.kind != "image":
            raise ConfigError(f"evaluator=inception scores images, got {data.kind} data; use evaluator=points")

    @torch.inference_mode()
    def _embed(self, samples: torch.Tensor) -> torch.Tensor:
        assert self._network is not None, "prepare() loads the network before embedding"
        pixels = to_uint8_rgb(samples.detach().cpu())
        features = [self._network(batch.to(self.device)).double().cpu() for batch in pixels.split(self.batch_size)]
        return torch.cat(features)  # (N, 2048)

    def _floor_key(self) -> dict[str, Any]:
        options = {"kid_subsets": self.kid_subsets, "kid_subset_size": self.kid_subset_size}
        return {**super()._floor_key(), **options, "network": self.weights_sha256}

    def _score(self, rows: torch.Tensor, n: int, real: RealSplit) -> dict[str, MetricValue]:
        scores = frechet_and_kid(rows, real.reference, n, self.kid_subsets, self.kid_subset_size, self.seed)
        neighbours = self._neighbour_scores(rows, n, real)
        return {"fid": scores["fd"], "kid": scores["kid"]} | neighbours

"""FID, KID, Inception Score and sFID on InceptionV3 for image folders, only where the network's weights are already
on disk.

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
from diffusion.evaluation.evaluators import (
    FeatureEvaluator,
    FeatureOptions,
    MetricValue,
    chunk_mean,
    frechet_and_kid,
)
from diffusion.evaluation.feature_stats import load_feature_statistics
from diffusion.evaluation.floors import RealSplit
from diffusion.evaluation.metrics import frechet_distance, frechet_distance_from_features
from diffusion.evaluation.pretrained import (
    check_sha256_option,
    check_weights_sha256,
    evaluator_device,
    to_uint8_rgb,
)
from diffusion.runtime.checks import ConfigError, check_bool, check_int

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


SPATIAL_CHANNELS = 7  # sFID keeps the first 7 of mixed_6/conv's 192 channels: 17 x 17 x 7 = 2,023 features


class InceptionHeads(nn.Module):
    """The FID Inception's pool features ``(N, 2048)`` with two more views of each image:

    - ``probs`` ``(N, 1008)``: softmax of the unbiased logits (pool @ fc.weight^T, torch-fidelity's
      ``logits_unbiased``), what the Inception Score reads;
    - ``spatial`` ``(N, 2023)``: the first 7 channels of the 17 x 17 map of ``mixed_6/conv`` (TF graph name;
      ``Mixed_6d.branch1x1`` here, after its ReLU), flattened height, width, channel as ADM's evaluator does, so its
      statistics compare with the ``mu_s``/``sigma_s`` of ADM's reference batches (sFID, Nash et al. 2021).
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self._spatial: torch.Tensor | None = None
        network.Mixed_6d.branch1x1.register_forward_hook(self._keep_spatial)

    def _keep_spatial(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self._spatial = output[:, :SPATIAL_CHANNELS]  # (N, 7, 17, 17)

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        pool = self.network(pixels).float()  # (N, 2048)
        assert self._spatial is not None, "the forward pass runs Mixed_6d"
        logits = pool @ self.network.fc.weight.T.float()  # (N, 1008)
        return {"pool": pool, "probs": logits.softmax(dim=1),
                "spatial": self._spatial.permute(0, 2, 3, 1).flatten(1).float()}


def inception_score(probs: torch.Tensor) -> float:
    """IS = exp(E_x KL(p(y|x) || p(y))) of class probabilities ``(N, C)``, p(y) their mean (Salimans et al. 2016,
    Sec. 4); higher is better, at most C."""
    marginal = probs.mean(0, keepdim=True)  # (1, C)
    log_ratio = probs.clamp_min(1e-30).log() - marginal.clamp_min(1e-30).log()
    return (probs * log_ratio).sum(1).mean().exp().item()


class InceptionEvaluator(FeatureEvaluator):
    """``fid`` and ``kid`` (with ``std_error``) on FID-Inception features, against the training images;
    ``inception_score`` and ``sfid`` (FD on the spatial features) when asked for, at the same chunk size ``n``.

    ``reference_stats`` (pytorch-fid's ``.npz``) adds ``fid_reference``, the published protocol, without a floor.
    Settings: see conf/evaluator/inception.yaml.
    """

    METRICS = ("fid", "kid")

    @property
    def metric_names(self) -> tuple[str, ...]:
        extra = (("inception_score",) if self.inception_score else ()) + (("sfid",) if self.sfid else ())
        return (*super().metric_names, *extra, *(("fid_reference",) if self.reference_stats is not None else ()))

    def __init__(
        self,
        weights_path: str | None = None,
        kid_subsets: int = 50,
        kid_subset_size: int = 1000,
        batch_size: int = 64,
        device: str = "cpu",
        reference_stats: str | None = None,
        weights_sha256: str | None = None,
        inception_score: bool = False,
        sfid: bool = False,
        **options: Unpack[FeatureOptions],
    ) -> None:
        super().__init__(**options)
        self.inception_score = check_bool(inception_score, "evaluator.inception_score")
        self.sfid = check_bool(sfid, "evaluator.sfid")
        self.weights_sha256 = check_sha256_option(weights_sha256) or INCEPTION_WEIGHTS_SHA256
        # Read now: a wrong path fails at start-up, not after training.
        self.reference_stats = None if reference_stats is None else load_feature_statistics(reference_stats)
        self.weights_path = Path(weights_path).expanduser() if weights_path else default_inception_weights_path()
        self.kid_subsets = check_int(kid_subsets, "evaluator.kid_subsets", minimum=1)
        self.kid_subset_size = check_int(kid_subset_size, "evaluator.kid_subset_size", minimum=2)
        self.batch_size = check_int(batch_size, "evaluator.batch_size", minimum=1)
        self.device = evaluator_device(device)
        self._network: nn.Module | None = None
        self._widths: dict[str, int] = {}  # columns of each view in an embedded row: pool, then probs, spatial

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
                    network = load_inception(self.weights_path)
                    heads = self.inception_score or self.sfid
                    self._network = (InceptionHeads(network) if heads else network).to(self.device).eval()
                except ImportError as error:  # e.g. torchvision missing under torch-fidelity
                    self.unavailable_reason = f"evaluator=inception: no FID/KID (import failed: {error})"
            if self.unavailable_reason is not None:
                log.warning(self.unavailable_reason)
        if self.unavailable_reason is None:
            super().prepare(data)

    def compute(self) -> dict[str, MetricValue]:
        """``fid`` and ``kid`` with floors; ``{}`` when FID is unavailable (see ``unavailable_reason``)."""
        scores = super().compute()
        if not scores:
            return scores
        if self.reference_stats is not None:
            rows = self._features(torch.cat(self._rows))  # (N, 2048): every sample, one Gaussian
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
        rows = [self._row(self._network(batch.to(self.device))) for batch in pixels.split(self.batch_size)]
        return torch.cat(rows)  # (N, 2048 [+ 1008] [+ 2023])

    def _row(self, output: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        """One float64 row per image: the pool features, then the class probabilities and spatial features asked
        for (their widths kept in ``_widths``)."""
        views = output if isinstance(output, dict) else {"pool": output}
        wanted = ["pool", *(["probs"] if self.inception_score else []), *(["spatial"] if self.sfid else [])]
        self._widths = {name: views[name].shape[1] for name in wanted}
        return torch.cat([views[name].double().cpu() for name in wanted], dim=1)

    def _view(self, rows: torch.Tensor, name: str) -> torch.Tensor:
        start = 0
        for view, width in self._widths.items():
            if view == name:
                return rows[:, start:start + width]
            start += width
        raise KeyError(name)

    def _features(self, rows: torch.Tensor) -> torch.Tensor:
        return self._view(rows, "pool") if self._widths else rows  # (N, 2048)

    def _floor_key(self) -> dict[str, Any]:
        options = {"kid_subsets": self.kid_subsets, "kid_subset_size": self.kid_subset_size,
                   "inception_score": self.inception_score, "sfid": self.sfid}
        return {**super()._floor_key(), **options, "network": self.weights_sha256}

    def _score(self, rows: torch.Tensor, n: int, real: RealSplit) -> dict[str, MetricValue]:
        pool, reference = self._features(rows), self._features(real.reference)
        scores = frechet_and_kid(pool, reference, n, self.kid_subsets, self.kid_subset_size, self.seed)
        scores = {"fid": scores["fd"], "kid": scores["kid"]}
        if self.inception_score:
            value = chunk_mean(self._view(rows, "probs"), n, inception_score)
            scores["inception_score"] = value._replace(higher_is_better=True)
        if self.sfid:
            spatial = self._view(real.reference, "spatial")
            scores["sfid"] = chunk_mean(self._view(rows, "spatial"), n,
                                        lambda chunk: frechet_distance_from_features(chunk, spatial))
        return scores | self._neighbour_scores(rows, n, real)

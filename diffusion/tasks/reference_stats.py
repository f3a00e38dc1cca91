"""``task=reference_stats``: a data set's reference statistics in an evaluator's feature space, made once.

The mean ``mu`` ``(D,)`` and covariance ``sigma`` ``(D, D)`` of the training images' features, as the ``.npz`` that
pytorch-fid, torch-fidelity and EDM read, and that ``evaluator.reference_stats`` reads here (``fid_reference``,
``fd_dinov2_reference``): the published protocol scores every sample against such a file.
"""

from __future__ import annotations

from pathlib import Path

from diffusion.data.base import BaseData
from diffusion.evaluation.evaluators import BaseEvaluator, FeatureEvaluator
from diffusion.evaluation.feature_stats import feature_statistics, save_feature_statistics
from diffusion.runtime.checks import ConfigError
from diffusion.tasks.sample_and_score import prepare_evaluator

STATS_FILE = "reference_stats.npz"


def reference_stats(evaluator: BaseEvaluator, data: BaseData, output_dir: Path, evaluator_name: str) -> Path:
    """Embed the training split (``evaluator.reference_size``: a seeded subset) with ``evaluator``'s network and
    write its feature statistics to ``output_dir/reference_stats.npz``.

    Raises:
        ConfigError: naming ``evaluator`` when it has no feature space or cannot run here, before anything is written.
    """
    if not isinstance(evaluator, FeatureEvaluator):
        raise ConfigError(f"task=reference_stats needs an evaluator with a feature space, got "
                          f"evaluator={evaluator_name}; use digits, mnist, inception, dinov2 or cmmd")
    prepare_evaluator(evaluator, data)  # also computes (and caches) the floors a later evaluation reads
    if evaluator.unavailable_reason is not None:
        raise ConfigError(f"task=reference_stats: {evaluator.unavailable_reason}")
    features = evaluator.reference_features()  # (R, D)
    stats = feature_statistics(features)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / STATS_FILE
    save_feature_statistics(path, stats)
    print(f"reference statistics of {len(features)} training images of {type(data).__name__} in "
          f"evaluator={evaluator_name}'s {features.shape[1]}-d feature space (mu, sigma): {path}")
    if hasattr(evaluator, "reference_stats"):  # the evaluators that score against such a file
        print(f"score against them with: evaluator={evaluator_name} evaluator.reference_stats={path}")
    return path

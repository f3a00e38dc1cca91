"""Sample-quality evaluation: evaluators with real-data floors, a shipped digit classifier, pure metric functions and
the formatting of results. Nothing here knows the Trainer or the Sampler: evaluators score the tensors they get."""

from diffusion.evaluation.class_metrics import class_coverage, class_histogram, class_kl
from diffusion.evaluation.classifier import DigitClassifier, load_digit_classifier, resize_to_digits
from diffusion.evaluation.digits import DigitsEvaluator
from diffusion.evaluation.evaluators import BaseEvaluator, MetricValue, NoneEvaluator
from diffusion.evaluation.feature_stats import (
    FeatureStatistics,
    feature_statistics,
    frechet_distance_between_files,
    load_feature_statistics,
    save_feature_statistics,
)
from diffusion.evaluation.inception import InceptionEvaluator
from diffusion.evaluation.metrics import (
    KernelInceptionDistance,
    PointCloudReference,
    energy_distance,
    frechet_distance,
    frechet_distance_from_features,
    kernel_inception_distance,
    median_heuristic_bandwidth,
    mmd_rbf,
    point_cloud_reference,
    sliced_wasserstein,
)
from diffusion.evaluation.neighbours import Memorization, PrecisionRecall, memorization_score, precision_recall
from diffusion.evaluation.points import PointsEvaluator
from diffusion.evaluation.results import (
    StepsRow,
    format_metrics,
    format_steps_table,
    metric_values,
    metrics_to_json,
    read_eval_json,
    summary_values,
)

__all__ = [
    "BaseEvaluator",
    "DigitsEvaluator",
    "InceptionEvaluator",
    "MetricValue",
    "NoneEvaluator",
    "PointsEvaluator",
    "StepsRow",
    "format_metrics",
    "format_steps_table",
    "metric_values",
    "metrics_to_json",
    "read_eval_json",
    "summary_values",
    "DigitClassifier",
    "FeatureStatistics",
    "KernelInceptionDistance",
    "Memorization",
    "PointCloudReference",
    "PrecisionRecall",
    "class_coverage",
    "class_histogram",
    "class_kl",
    "energy_distance",
    "feature_statistics",
    "frechet_distance",
    "frechet_distance_between_files",
    "frechet_distance_from_features",
    "kernel_inception_distance",
    "load_digit_classifier",
    "load_feature_statistics",
    "median_heuristic_bandwidth",
    "memorization_score",
    "mmd_rbf",
    "point_cloud_reference",
    "precision_recall",
    "resize_to_digits",
    "save_feature_statistics",
    "sliced_wasserstein",
]

"""The digits evaluator: generated digit images scored through the shipped digit classifier."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, Unpack

import torch

from diffusion.data.base import BaseData
from diffusion.evaluation.class_metrics import class_coverage, class_histogram, class_kl
from diffusion.evaluation.classifier import (
    MNIST_WEIGHTS_PATH,
    NUM_DIGIT_CLASSES,
    WEIGHTS_PATH,
    DigitClassifier,
    load_digit_classifier,
)
from diffusion.evaluation.evaluators import (
    FeatureEvaluator,
    FeatureOptions,
    MetricValue,
    chunk_mean,
    frechet_and_kid,
)
from diffusion.evaluation.floors import RealSplit, file_sha256
from diffusion.runtime.checks import ConfigError, check_choice, check_float, check_int


class DigitsEvaluator(FeatureEvaluator):
    """Digit images scored through the shipped digit classifier (the role Inception plays in FID).
    ``fd`` and ``kid`` on its penultimate features; ``class_coverage``, ``class_kl`` and ``confidence`` (mean max
    softmax) from its labels. Settings: see conf/evaluator/digits.yaml.
    """

    METRICS = ("fd", "kid", "class_coverage", "class_kl", "confidence")

    def __init__(
        self,
        kid_subsets: int = 50,
        kid_subset_size: int = 1000,
        coverage_min_fraction: float = 0.01,
        classifier_path: str | None = None,
        batch_size: int = 1024,
        classifier: Literal["digits", "mnist"] = "digits",
        **options: Unpack[FeatureOptions],
    ) -> None:
        super().__init__(**options)
        self.kid_subsets = check_int(kid_subsets, "evaluator.kid_subsets", minimum=1)
        self.kid_subset_size = check_int(kid_subset_size, "evaluator.kid_subset_size", minimum=2)
        self.coverage_min_fraction = check_float(coverage_min_fraction, "evaluator.coverage_min_fraction", 0.0, 1.0)
        self.batch_size = check_int(batch_size, "evaluator.batch_size", minimum=1)
        check_choice(classifier, "evaluator.classifier", ("digits", "mnist"))
        shipped = MNIST_WEIGHTS_PATH if classifier == "mnist" else WEIGHTS_PATH
        self.classifier_path = classifier_path if classifier_path is not None else str(shipped)
        self._classifier: DigitClassifier | None = None
        self._label_histogram: torch.Tensor | None = None  # (10,) float64, training labels

    def _check_data(self, data: BaseData) -> None:
        shape = tuple(data.sample_shape)
        if data.kind != "image" or shape[0] != 1:
            raise ConfigError(
                f"evaluator=digits scores single-channel digit images, got {data.kind} data of shape {shape}; "
                "use evaluator=points for 2-D data or evaluator=inception for image folders"
            )

    @torch.inference_mode()
    def _embed(self, samples: torch.Tensor) -> torch.Tensor:
        if self._classifier is None:
            self._classifier = load_digit_classifier(path=self.classifier_path)
        rows = []
        for batch in samples.detach().cpu().float().split(self.batch_size):
            features = self._classifier.features(batch)  # (B, 128)
            probs = self._classifier.head(features).softmax(dim=-1)  # (B, 10); dropout is off in eval mode
            rows.append(torch.cat([features, probs], dim=1).double())
        return torch.cat(rows)  # (N, 128 + 10)

    def _prepare_reference(self, data: BaseData) -> None:
        labels = data.load().train_labels
        if labels is None:  # unlabelled digit-like data: the classifier's view of the training set stands in
            labels = self._prepared_reference()[:, -NUM_DIGIT_CLASSES:].argmax(dim=1)
        self._label_histogram = class_histogram(labels, NUM_DIGIT_CLASSES)

    def _features(self, rows: torch.Tensor) -> torch.Tensor:
        return rows[:, :-NUM_DIGIT_CLASSES]  # (N, 128): the classifier's penultimate features

    def _floor_key(self) -> dict[str, Any]:
        options = {"kid_subsets": self.kid_subsets, "kid_subset_size": self.kid_subset_size,
                   "coverage_min_fraction": self.coverage_min_fraction}
        return {**super()._floor_key(), **options, "network": file_sha256(Path(self.classifier_path))}

    def _score(self, rows: torch.Tensor, n: int, real: RealSplit) -> dict[str, MetricValue]:
        reference = self._features(real.reference)
        features, probs = self._features(rows), rows[:, -NUM_DIGIT_CLASSES:]  # (N, 128), (N, 10)
        predicted = probs.argmax(dim=1)  # (N,)
        confidence = probs.max(dim=1).values  # (N,)
        scores = frechet_and_kid(features, reference, n, self.kid_subsets, self.kid_subset_size, self.seed)
        scores |= self._neighbour_scores(rows, n, real)
        coverage = chunk_mean(
            predicted, n, lambda part: class_coverage(part, NUM_DIGIT_CLASSES, self.coverage_min_fraction)
        )
        scores["class_coverage"] = coverage._replace(higher_is_better=True)
        histogram = self._label_histogram
        assert histogram is not None, "prepare() sets the training label histogram before any score"
        scores["class_kl"] = chunk_mean(predicted, n, lambda part: class_kl(part, histogram, NUM_DIGIT_CLASSES))
        std_error = (confidence.std() / math.sqrt(len(confidence))).item()
        scores["confidence"] = MetricValue(confidence.mean().item(), std_error=std_error, higher_is_better=True)
        return scores

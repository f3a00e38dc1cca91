"""The evaluator interface and the scoring rule every evaluator shares: each score beside its real-data floor.

An evaluator is prepared once on a data set (:meth:`BaseEvaluator.prepare`), then fed generated samples batch by
batch (:meth:`~BaseEvaluator.update`) and asked for its scores (:meth:`~BaseEvaluator.compute`), as torchmetrics
metrics are. Every score comes as a :class:`MetricValue` holding its *floor*: the same metric between the held-out
(val) real data and the same training reference, at the same sample count. A model cannot be expected to beat
real data, so ``fd: 1.9 (real-data floor 0.4)`` says how far from "perfect" the samples are.

Sample count. Most of these metrics are biased by the number of samples n scored (FD, sliced Wasserstein, energy
distance and the class-histogram scores all shrink as n grows), so a floor is only comparable at the same n. The
validation split is small (180 digits), usually smaller than ``num_samples``. Rather than scoring the floor at a
smaller n than the samples (a floor that is too high flatters the model), both sides are scored at
``n = min(number of generated samples, len(val))``: the generated samples are cut into chunks of n (the last chunk
ends at the last sample and may overlap the previous one, so all samples count and every chunk has n rows),
the metric is computed per chunk against the training reference and averaged; ``std_error`` is the spread of the
chunk values over sqrt(number of chunks), an approximation since chunks share the reference. The samples are put in
a seeded random order before they are cut: a chunk must be a random subset, and samples may arrive sorted (a
class-conditional grid, ``sampler.class_labels=all``, comes one class after another; scored in that order, a chunk
of four classes against all ten inflates FD 25-fold on real digits). The floor applies the same rule to the
validation set (one chunk when it has n rows). Metrics whose expectation does not depend on n are
scored on all samples at once: KID (unbiased; its subset size is capped at n on both sides) and mean confidence.

Evaluators: :class:`~diffusion.evaluation.digits.DigitsEvaluator`,
:class:`~diffusion.evaluation.points.PointsEvaluator`, :class:`~diffusion.evaluation.inception.InceptionEvaluator`
and :class:`NoneEvaluator`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar, NamedTuple, TypedDict

import torch

from diffusion.data.base import BaseData
from diffusion.evaluation.metrics import frechet_distance_from_features, kernel_inception_distance
from diffusion.evaluation.neighbours import memorization_score, precision_recall
from diffusion.runtime.checks import ConfigError, check_int


class MetricValue(NamedTuple):
    """One score: its ``value``, the real-data ``floor`` at the same sample count (None when there is none), the
    standard error of ``value`` when known, and whether larger is better (coverage, confidence)."""

    value: float
    floor: float | None = None
    std_error: float | None = None
    higher_is_better: bool = False


class BaseEvaluator(ABC):
    """Scores generated samples: ``prepare(data)`` once, then ``reset`` / ``update`` (repeatedly) / ``compute``.

    Args:
        num_samples: how many samples to generate for one evaluation.
        every_n_epochs: also evaluate every this many epochs during training; ``None`` or 0: only at the end.
        sampler_steps: step counts at which to score the same checkpoint (see
            :func:`~diffusion.evaluation.sampler_steps.evaluate_at_steps`); ``None``: only the sampler's own.
        seeds: score the same checkpoint on one disjoint set of ``num_samples`` samples per seed (seed s: sample
            indices from ``s * num_samples`` on, of the sampler's per-sample noise streams) and report the mean,
            standard deviation and minimum over the sets (EDM reports the minimum of three); ``None``: one set.

    Raises:
        ConfigError: for an out-of-range argument, naming its ``evaluator.*`` key.
    """

    #: False for an evaluator that scores nothing (``evaluator=none``): callers then skip sampling for it.
    enabled: ClassVar[bool] = True

    def __init__(
        self,
        num_samples: int = 1000,
        every_n_epochs: int | None = None,
        sampler_steps: Sequence[int] | None = None,
        seeds: Sequence[int] | None = None,
    ) -> None:
        self.num_samples = check_int(num_samples, "evaluator.num_samples", minimum=2)
        every = 0 if every_n_epochs is None else check_int(every_n_epochs, "evaluator.every_n_epochs", minimum=0)
        self.every_n_epochs: int | None = every or None
        self.sampler_steps = _check_steps(sampler_steps)
        self.seeds = _check_seeds(seeds)
        if self.seeds is not None and self.sampler_steps is not None:
            raise ConfigError("evaluator.seeds and evaluator.sampler_steps cannot be combined: set one of them to null")
        #: Set by :meth:`prepare` when this evaluator cannot score on this machine (one line saying how to fix it).
        self.unavailable_reason: str | None = None

    @property
    def available(self) -> bool:
        """Whether this evaluator scores anything here (enabled, and nothing it needs is missing)."""
        return self.enabled and self.unavailable_reason is None

    def is_due(self, epoch: int) -> bool:
        """Whether to evaluate after ``epoch`` (1-based) during training; the end of training is always due."""
        if not self.available or self.every_n_epochs is None:
            return False
        return epoch % self.every_n_epochs == 0

    #: The metrics :meth:`compute` returns (beside those the options add, see :attr:`metric_names`).
    METRICS: ClassVar[tuple[str, ...]] = ()

    @property
    def metric_names(self) -> tuple[str, ...]:
        """Every metric this evaluator, as configured, computes: what ``trainer.monitor`` may name."""
        return self.METRICS

    @abstractmethod
    def prepare(self, data: BaseData) -> None:
        """Compute the training reference and the real-data floors once; later calls do nothing.

        Raises:
            ConfigError: if this evaluator does not fit ``data`` (for example ``evaluator=digits`` on 2-D points).
        """

    @abstractmethod
    def update(self, samples: torch.Tensor) -> None:
        """Add a batch of generated samples ``(B, *sample_shape)`` in the data's range."""

    @abstractmethod
    def compute(self) -> dict[str, MetricValue]:
        """Scores of all samples added since the last :meth:`reset`, each with its floor."""

    @abstractmethod
    def reset(self) -> None:
        """Forget the generated samples (the training reference and floors are kept)."""

    def evaluate(self, samples: torch.Tensor) -> dict[str, MetricValue]:
        """``reset``, ``update(samples)``, ``compute`` in one call."""
        self.reset()
        self.update(samples)
        return self.compute()


def _check_steps(sampler_steps: Sequence[int] | None) -> list[int] | None:
    if sampler_steps is None:
        return None
    if isinstance(sampler_steps, (str, bytes)) or not isinstance(sampler_steps, Sequence) or not sampler_steps:
        raise ConfigError(f"evaluator.sampler_steps must be null or a list of step counts, got {sampler_steps!r}")
    return [check_int(s, "evaluator.sampler_steps", minimum=1) for s in sampler_steps]


def _check_seeds(seeds: Sequence[int] | None) -> list[int] | None:
    if seeds is None:
        return None
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence) or not seeds:
        raise ConfigError(f"evaluator.seeds must be null or a list of seeds such as [0,1,2], got {seeds!r}")
    checked = [check_int(s, "evaluator.seeds", minimum=0) for s in seeds]
    if len(set(checked)) != len(checked):
        raise ConfigError(f"evaluator.seeds must be distinct (each seed is one sample set), got {list(seeds)!r}")
    return checked


class NoneEvaluator(BaseEvaluator):
    """``evaluator=none``: scores nothing, so training and sampling run without any evaluation."""

    enabled: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__(num_samples=2)

    def prepare(self, data: BaseData) -> None:
        pass

    def update(self, samples: torch.Tensor) -> None:
        pass

    def compute(self) -> dict[str, MetricValue]:
        return {}

    def reset(self) -> None:
        pass


# ------------------------------------------------------------------------------------------- chunked scoring


def chunk_slices(total: int, size: int) -> list[slice]:
    """Row ranges of ``size`` covering ``range(total)``: consecutive chunks, the last one ending at ``total``
    (overlapping its predecessor when ``size`` does not divide ``total``), so every chunk holds ``size`` rows.

    Raises:
        ValueError: if ``size`` is not in ``[1, total]``.
    """
    if not 1 <= size <= total:
        raise ValueError(f"chunk size must be in [1, {total}], got {size}")
    slices = [slice(start, start + size) for start in range(0, total - size + 1, size)]
    if total % size:
        slices.append(slice(total - size, total))
    return slices


def chunk_mean(rows: torch.Tensor, size: int, metric: Callable[[torch.Tensor], float]) -> MetricValue:
    """Mean of ``metric`` over the chunks of :func:`chunk_slices`; ``std_error`` is their std / sqrt(count)
    (``None`` for a single chunk)."""
    return mean_of_chunks([metric(rows[part]) for part in chunk_slices(len(rows), size)])


def mean_of_chunks(values: Sequence[float], higher_is_better: bool = False) -> MetricValue:
    """The mean of per-chunk values with ``std_error`` = std / sqrt(count) (``None`` for a single chunk)."""
    tensor = torch.tensor(values, dtype=torch.float64)
    std_error = (tensor.std() / math.sqrt(len(tensor))).item() if len(tensor) > 1 else None
    return MetricValue(tensor.mean().item(), std_error=std_error, higher_is_better=higher_is_better)


def _random_subset(x: torch.Tensor, size: int | None, seed: int) -> torch.Tensor:
    """``size`` rows of ``x`` drawn without replacement (seeded); all of ``x`` when ``size`` is None or larger."""
    if size is None or size >= len(x):
        return x
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return x[order[:size]]


class FeatureOptions(TypedDict, total=False):
    """The :class:`FeatureEvaluator` arguments that a subclass passes on as they are."""

    num_samples: int
    every_n_epochs: int | None
    sampler_steps: Sequence[int] | None
    reference_size: int | None
    seed: int
    neighbour_metrics: bool
    seeds: Sequence[int] | None


class FeatureEvaluator(BaseEvaluator):
    """An evaluator that embeds samples as float64 rows (:meth:`_embed`) and scores rows against the embedded
    training reference (:meth:`_score`), with floors from the embedded validation split (see the module docstring
    for the sample-count rule).

    Args:
        num_samples, every_n_epochs, sampler_steps, seeds: see :class:`BaseEvaluator`.
        reference_size: score against this many training samples (a seeded subset) instead of all of them, to bound
            the cost of pairwise metrics; ``None``: the whole training split.
        seed: seeds the reference subset and every randomised metric, so scores are comparable across runs.
        neighbour_metrics: also score ``precision`` and ``recall`` (Kynkaanniemi et al. 2019, k = 3; chunk means at
            the scoring sample count, higher is better) and ``memorization`` (share of samples nearer a reference
            item than the 1% quantile of validation items' nearest-reference distances; over all samples) in the
            evaluator's feature space, each with its real-data floor. Costs O(N x reference) distances.

    Raises:
        ConfigError: for an out-of-range argument, naming its ``evaluator.*`` key.
    """

    @property
    def metric_names(self) -> tuple[str, ...]:
        neighbours = ("precision", "recall", "memorization") if self.neighbour_metrics else ()
        return (*self.METRICS, *neighbours)

    def __init__(
        self,
        num_samples: int = 1000,
        every_n_epochs: int | None = None,
        sampler_steps: Sequence[int] | None = None,
        reference_size: int | None = None,
        seed: int = 0,
        neighbour_metrics: bool = False,
        seeds: Sequence[int] | None = None,
    ) -> None:
        super().__init__(num_samples, every_n_epochs, sampler_steps, seeds)
        if reference_size is not None:
            check_int(reference_size, "evaluator.reference_size", minimum=2)
        self.reference_size = reference_size
        self.seed = check_int(seed, "evaluator.seed")
        if not isinstance(neighbour_metrics, bool):
            raise ConfigError(f"evaluator.neighbour_metrics must be true or false, got {neighbour_metrics!r}")
        self.neighbour_metrics = neighbour_metrics
        self._reference: torch.Tensor | None = None  # (R, F) float64, embedded training samples
        self._val: torch.Tensor | None = None  # (V, F) float64, embedded validation samples
        self._floors: dict[int, dict[str, MetricValue]] = {}  # by sample count n
        self._rows: list[torch.Tensor] = []

    @abstractmethod
    def _check_data(self, data: BaseData) -> None:
        """Raise :class:`ConfigError` if ``data`` is not the kind this evaluator scores."""

    @abstractmethod
    def _embed(self, samples: torch.Tensor) -> torch.Tensor:
        """Rows ``(N, F)`` in float64 that the metrics look at (features, probabilities or the points)."""

    @abstractmethod
    def _score(self, rows: torch.Tensor, n: int) -> dict[str, MetricValue]:
        """Scores (without floors) of embedded rows ``(N, F)`` against the reference, at sample count ``n``."""

    def _prepare_reference(self, data: BaseData) -> None:
        """Extra once-only state from the data (label histogram, kernel bandwidth); runs before any floor."""

    def prepare(self, data: BaseData) -> None:
        """Embed the training reference and the validation split, and score the floor at ``num_samples``.

        Raises:
            ConfigError: if the data does not fit this evaluator, or its validation split has under 2 samples.
        """
        if self._reference is not None:
            return
        self._check_data(data)
        splits = data.load()
        if len(splits.val) < 2:
            raise ConfigError(
                f"evaluator needs at least 2 validation samples, got {len(splits.val)}; raise data.val_fraction"
            )
        try:
            # prepare_batch: uint8 splits (MNIST, CIFAR-10) become [-1, 1] floats; no flips without a seed.
            reference = _random_subset(splits.train, self.reference_size, self.seed)
            self._reference = self._embed(data.prepare_batch(reference))
            self._val = self._embed(data.prepare_batch(splits.val))
            self._prepare_reference(data)
            self.floor(self.num_samples)
        except BaseException:  # half-prepared state would make the next prepare() a silent no-op
            self._reference = self._val = None
            self._floors = {}
            raise

    def floor(self, num_samples: int) -> dict[str, MetricValue]:
        """Real-data floors for ``num_samples`` generated samples (scored at ``min(num_samples, len(val))``), computed
        once per sample count.

        Raises:
            RuntimeError: if :meth:`prepare` has not run.
        """
        val = self._prepared_val()
        n = min(num_samples, len(val))
        if n not in self._floors:
            self._floors[n] = self._score(val, n)
        return self._floors[n]

    def update(self, samples: torch.Tensor) -> None:
        """Embed a batch of generated samples and keep the rows (float64).

        Raises:
            RuntimeError: if :meth:`prepare` has not run.
        """
        self._prepared_val()
        self._rows.append(self._embed(samples))

    def compute(self) -> dict[str, MetricValue]:
        """Scores of the samples added since :meth:`reset`, each with its floor.

        Raises:
            RuntimeError: if :meth:`prepare` has not run.
            ValueError: if fewer than 2 samples were added.
        """
        val = self._prepared_val()
        total = sum(len(rows) for rows in self._rows)
        if total < 2:
            raise ValueError(f"evaluator needs at least 2 generated samples to score, got {total}")
        rows = torch.cat(self._rows)
        rows = rows[torch.randperm(total, generator=torch.Generator().manual_seed(self.seed))]  # see module docstring
        scores = self._score(rows, min(total, len(val)))
        floors = self.floor(total)
        return {name: score._replace(floor=floors[name].value) for name, score in scores.items()}

    def reset(self) -> None:
        """Forget the generated samples (the reference and floors are kept)."""
        self._rows = []

    def _prepared_val(self) -> torch.Tensor:
        if self._val is None:
            raise RuntimeError(f"{type(self).__name__}.prepare(data) must run before samples are scored")
        return self._val

    def _prepared_reference(self) -> torch.Tensor:
        assert self._reference is not None, "prepare() sets the reference"
        return self._reference

    def _neighbour_scores(
        self, features: torch.Tensor, reference: torch.Tensor, heldout: torch.Tensor, n: int
    ) -> dict[str, MetricValue]:
        """``precision``/``recall`` (chunks of ``n``) and ``memorization`` (all rows) of ``features`` ``(N, F)``
        against ``reference`` ``(R, F)``, ``heldout`` ``(V, F)`` setting the memorization threshold; ``{}`` unless
        ``neighbour_metrics``. Subclasses pass the feature columns of their rows."""
        if not self.neighbour_metrics:
            return {}
        pairs = [precision_recall(reference, features[part]) for part in chunk_slices(len(features), n)]
        copies = memorization_score(features, reference, heldout)
        return {
            "precision": mean_of_chunks([pair.precision for pair in pairs], higher_is_better=True),
            "recall": mean_of_chunks([pair.recall for pair in pairs], higher_is_better=True),
            "memorization": MetricValue(copies.score),
        }


def frechet_and_kid(
    features: torch.Tensor, reference: torch.Tensor, n: int, kid_subsets: int, kid_subset_size: int, seed: int
) -> dict[str, MetricValue]:
    """``fd`` (chunk mean at sample count ``n``) and ``kid`` (all features; subsets of ``min(kid_subset_size, n)``)
    of features ``(N, D)`` against reference features ``(R, D)``.

    Raises:
        ConfigError: if ``kid_subsets`` is out of range (see :func:`kernel_inception_distance`).
        ValueError: if the features are not 2-D with a shared ``D`` or ``n`` is not in ``[2, N]``.
    """
    subset_size = min(kid_subset_size, n, len(reference))
    kid = kernel_inception_distance(features, reference, num_subsets=kid_subsets, subset_size=subset_size, seed=seed)
    return {
        "fd": chunk_mean(features, n, lambda chunk: frechet_distance_from_features(chunk, reference)),
        "kid": MetricValue(kid.mean, std_error=kid.std_error if kid_subsets > 1 else None),
    }

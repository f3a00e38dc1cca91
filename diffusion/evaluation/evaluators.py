"""The evaluator interface and the rule every evaluator scores by: each score beside its real-data floor.

A score's *floor* is the same metric between held-out real data and the training reference. FD, sliced
Wasserstein, energy and the class scores are biased by the sample count, so both sides are scored at
``n = min(samples, len(val))``: the seeded-shuffled samples are cut into chunks of n, and the chunk mean is reported
with ``std_error`` = chunk std / sqrt(chunks). KID (unbiased) and mean confidence use all samples at once.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypedDict

import torch

from diffusion.data.base import BaseData
from diffusion.evaluation.floors import (
    Floor,
    RealSplit,
    cached_floors,
    default_cache_dir,
    rows_digest,
    score_draws,
    summarise,
)
from diffusion.evaluation.metric_value import NOT_FLAGGED, MetricValue, beats_floor, with_floor  # noqa: F401
from diffusion.evaluation.metrics import frechet_distance_from_features, kernel_inception_distance
from diffusion.evaluation.neighbours import RealNeighbours, memorization_score, real_neighbours
from diffusion.evaluation.uncertainty import bootstrap_std_errors
from diffusion.runtime.checks import ConfigError, check_int


class BaseEvaluator(ABC):
    """Scores generated samples: ``prepare(data)`` once, then ``reset`` / ``update`` / ``compute``.

    Options (``evaluator.*``) are described in ``conf/evaluator/``; a bad one raises ConfigError naming its key.
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
        self.seeds = _check_seeds(seeds)  # with sampler_steps: each step count scored on every seed's set
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
        """Compute the training reference and the real-data floors once; ConfigError if ``data`` does not fit."""

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
    """Row ranges of ``size`` covering ``range(total)``, the last ending at ``total`` (overlapping its
    predecessor when ``size`` does not divide ``total``), so every chunk holds ``size`` rows.
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
    floor_draws: int
    bootstrap: int
    floor_cache_dir: str | None


class FeatureEvaluator(BaseEvaluator):
    """Embeds samples as float64 rows (:meth:`_embed`) and scores them against the embedded training reference
    (:meth:`_score`), with floors (:mod:`~diffusion.evaluation.floors`) and bootstrap standard errors
    (:mod:`~diffusion.evaluation.uncertainty`). Settings: see conf/evaluator/points.yaml and digits.yaml.
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
        floor_draws: int = 128,
        bootstrap: int = 200,
        floor_cache_dir: str | None = None,
    ) -> None:
        super().__init__(num_samples, every_n_epochs, sampler_steps, seeds)
        if reference_size is not None:
            check_int(reference_size, "evaluator.reference_size", minimum=2)
        self.reference_size = reference_size
        self.seed = check_int(seed, "evaluator.seed")
        if not isinstance(neighbour_metrics, bool):
            raise ConfigError(f"evaluator.neighbour_metrics must be true or false, got {neighbour_metrics!r}")
        self.neighbour_metrics = neighbour_metrics
        self.floor_draws = check_int(floor_draws, "evaluator.floor_draws", minimum=1)
        self.bootstrap = check_int(bootstrap, "evaluator.bootstrap", minimum=0)
        if self.bootstrap == 1:
            raise ConfigError("evaluator.bootstrap must be 0 (off) or at least 2 resamples, got 1")
        self.floor_cache_dir = Path(floor_cache_dir).expanduser() if floor_cache_dir else default_cache_dir()
        self._reference: torch.Tensor | None = None  # (R, F) float64, embedded training samples
        self._val: torch.Tensor | None = None  # (V, F) float64, embedded validation samples
        self._floors: dict[int, dict[str, Floor]] = {}  # by sample count n
        self._rows: list[torch.Tensor] = []
        self._neighbours: tuple[RealSplit, RealNeighbours] | None = None  # the split they were computed for
        self._data_name = ""  # the data set's class, part of the floor's cache key

    @abstractmethod
    def _check_data(self, data: BaseData) -> None:
        """Raise :class:`ConfigError` if ``data`` is not the kind this evaluator scores."""

    @abstractmethod
    def _embed(self, samples: torch.Tensor) -> torch.Tensor:
        """Rows ``(N, F)`` in float64 that the metrics look at (features, probabilities or the points)."""

    @abstractmethod
    def _score(self, rows: torch.Tensor, n: int, real: RealSplit) -> dict[str, MetricValue]:
        """Scores (without floors) of embedded rows ``(N, F)`` against ``real.reference``, at sample count ``n``."""

    def _prepare_reference(self, data: BaseData) -> None:
        """Extra once-only state from the data (label histogram, kernel bandwidth); runs before any floor."""

    def _features(self, rows: torch.Tensor) -> torch.Tensor:
        """The columns of embedded rows that nearest-neighbour distances (near-copies) are measured in."""
        return rows

    def _floor_key(self) -> dict[str, Any]:
        """What the floor depends on beyond the rows and sizes: the feature network and the scoring options."""
        return {"evaluator": type(self).__name__, "seed": self.seed, "neighbour_metrics": self.neighbour_metrics}

    def prepare(self, data: BaseData) -> None:
        """Embed the training reference and the validation split (at least 2 samples) and score the floor."""
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
            self._data_name = type(data).__name__
            self._prepare_reference(data)
            self.floor(self.num_samples)
        except BaseException:  # half-prepared state would make the next prepare() a silent no-op
            self._reference = self._val = None
            self._floors = {}
            raise

    def reference_features(self) -> torch.Tensor:
        """The training reference's feature rows ``(R, D)``, those FD compares against (after :meth:`prepare`)."""
        return self._features(self._prepared_reference())

    def _real(self) -> RealSplit:
        return RealSplit(self._prepared_reference(), self._prepared_val())

    def floor(self, num_samples: int) -> dict[str, Floor]:
        """Real-data floors for ``num_samples`` samples, scored at ``min(num_samples, len(val))``: computed once
        per count, and read from the on-disk cache when this data, sizes, n and network were seen before."""
        real = self._real()
        n = min(num_samples, len(real.heldout))
        if n not in self._floors:
            sizes = {"reference_size": len(real.reference), "heldout_size": len(real.heldout), "n": n}
            fields = {**self._floor_key(), "data": self._data_name, "rows": rows_digest(torch.cat(real)), **sizes,
                      "draws": self.floor_draws}
            self._floors[n] = cached_floors(self.floor_cache_dir, fields, lambda: {
                name: summarise(values) for name, values in self.floor_draw_scores(num_samples).items()})
        return self._floors[n]

    def floor_draw_scores(self, num_samples: int) -> dict[str, list[float]]:
        """Every real-data draw's scores at ``min(num_samples, len(val))`` (what :meth:`floor` summarises;
        computed afresh, never cached)."""
        real = self._real()
        n = min(num_samples, len(real.heldout))

        def score(heldout: torch.Tensor, split: RealSplit) -> dict[str, float]:
            return {name: m.value for name, m in self._score(heldout, n, split).items()}

        return score_draws(real, n, self.floor_draws, self.seed, score)

    def update(self, samples: torch.Tensor) -> None:
        """Embed a batch of generated samples and keep the rows (float64); nothing when the feature network is
        unavailable (``unavailable_reason``: weights not on this machine)."""
        if self.unavailable_reason is not None:
            return
        self._prepared_val()
        self._rows.append(self._embed(samples))

    def compute(self) -> dict[str, MetricValue]:
        """Scores of the samples added since :meth:`reset` (at least 2), each with its floor, its standard error
        (bootstrap) and, for a score that beats its floor, the share of near-copies among the samples; ``{}`` when
        the feature network is unavailable."""
        if self.unavailable_reason is not None:
            return {}
        real = self._real()
        total = sum(len(rows) for rows in self._rows)
        if total < 2:
            raise ValueError(f"evaluator needs at least 2 generated samples to score, got {total}")
        rows = torch.cat(self._rows)
        rows = rows[torch.randperm(total, generator=torch.Generator().manual_seed(self.seed))]  # see module docstring
        n = min(total, len(real.heldout))
        scores = self._score(rows, n, real)
        if self.bootstrap and not (self.seeds and len(self.seeds) > 1):
            errors = bootstrap_std_errors(
                rows, lambda r: {k: m.value for k, m in self._score(r, n, real).items()}, self.bootstrap, self.seed
            )
            scores = {name: s._replace(std_error=errors.get(name, s.std_error)) for name, s in scores.items()}
        floors = self.floor(total)
        scores = {name: with_floor(score, floors.get(name)) for name, score in scores.items()}
        scores = {k: s._replace(beats_floor=False) if k in NOT_FLAGGED else s for k, s in scores.items()}
        if any(score.beats_floor for score in scores.values()):
            features = self._features
            copies = memorization_score(features(rows), features(real.reference), features(real.heldout)).score
            scores = {k: s._replace(near_copies=copies) if s.beats_floor else s for k, s in scores.items()}
        return scores

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

    def _neighbour_scores(self, rows: torch.Tensor, n: int, real: RealSplit) -> dict[str, MetricValue]:
        """``precision``/``recall`` (chunks of ``n``) and ``memorization`` of rows ``(N, F)``; ``{}`` unless
        ``neighbour_metrics``."""
        if not self.neighbour_metrics:
            return {}
        features, reference = self._features(rows), self._features(real.reference)
        heldout = self._features(real.heldout)
        known = self._neighbours
        if known is None or known[0].reference is not real.reference or known[0].heldout is not real.heldout:
            known = self._neighbours = (real, real_neighbours(reference, heldout))  # once per split, not per resample
        pairs = [known[1].precision_recall(features[part]) for part in chunk_slices(len(features), n)]
        copies = known[1].memorization(features)
        return {
            "precision": mean_of_chunks([pair.precision for pair in pairs], higher_is_better=True),
            "recall": mean_of_chunks([pair.recall for pair in pairs], higher_is_better=True),
            "memorization": MetricValue(copies.score),
        }


def frechet_and_kid(
    features: torch.Tensor, reference: torch.Tensor, n: int, kid_subsets: int, kid_subset_size: int, seed: int
) -> dict[str, MetricValue]:
    """``fd`` (chunk mean at sample count ``n``) and ``kid`` (all features, subsets of ``min(kid_subset_size, n)``)
    of features ``(N, D)`` against reference features ``(R, D)``.
    """
    subset_size = min(kid_subset_size, n, len(reference))
    kid = kernel_inception_distance(features, reference, num_subsets=kid_subsets, subset_size=subset_size, seed=seed)
    return {
        "fd": chunk_mean(features, n, lambda chunk: frechet_distance_from_features(chunk, reference)),
        "kid": MetricValue(kid.mean, std_error=kid.std_error if kid_subsets > 1 else None),
    }

"""The score against training images seen, as EDM (Karras et al. 2022, Fig. 5) and EDM2 plot FID over training:
each periodic evaluation (``evaluator.every_n_epochs``) at its kimg, drawn from the run's ``metrics.jsonl``, so a
resumed run's curve holds every session's evaluations (a repeated epoch: its later record).

kimg counts optimizer steps x the global batch (``trainer.batch_size``) / 1000, as EDM's training loop does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from diffusion.loggers.base import BaseLogger
from diffusion.sweeps.job_results import epoch_records

KIMG = "kimg"  # the key the periodic evaluation logs beside its scores
CURVE_FILE = "score_vs_kimg.png"
CURVE_KEY = "score_vs_kimg"  # the logger's name for the chart (W&B: one line chart per score under it)
Curves = dict[str, list[tuple[float, float]]]


def kimg(global_step: int, images_per_step: int) -> float:
    """Thousands of training images seen after ``global_step`` optimizer steps of ``images_per_step``."""
    return global_step * images_per_step / 1000


def score_curves(run_dir: Path, metric_names: Sequence[str]) -> Curves:
    """``{score: [(kimg, value), ...]}`` over the epochs whose record in ``metrics.jsonl`` has a kimg and the
    score, in epoch order; scores never evaluated are left out."""
    epochs, _ = epoch_records(run_dir)
    curves: Curves = {}
    for epoch in sorted(epochs):
        record = epochs[epoch]
        if not isinstance(record.get(KIMG), (int, float)):
            continue
        for name in metric_names:
            value = record.get(name)
            if isinstance(value, (int, float)) and math.isfinite(value):
                curves.setdefault(name, []).append((float(record[KIMG]), float(value)))
    return curves


def write_score_curve(run_dir: Path, metric_names: Sequence[str], logger: BaseLogger) -> Path | None:
    """``score_vs_kimg.png`` beside the run (one panel per score) and the same curves to ``logger`` as a chart;
    None (nothing written) when the run made no periodic evaluation."""
    from diffusion.storage.images import save_curves

    curves = score_curves(run_dir, metric_names)
    if not curves:
        return None
    path = save_curves(curves, run_dir / CURVE_FILE, xlabel="training images seen (kimg)")
    logger.log_curve(CURVE_KEY, KIMG, curves)
    logger.log(f"score against training images seen: {path}")
    return path

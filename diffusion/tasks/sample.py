"""``task=sample`` / ``task=evaluate``: load a run's best checkpoint (or exported weights), sample (and score).

Under torchrun every rank samples its share into rank 0's output directory; rank 0 alone writes and scores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffusion.loggers import FileLogger, NullLogger
from diffusion.runtime.distributed import DistributedContext
from diffusion.storage import checkpoint
from diffusion.tasks.components import Components, RunSettings
from diffusion.tasks.exits import exit_on_failure
from diffusion.tasks.ode_scores import add_to_eval_json, check_ode_scores, ode_scores
from diffusion.tasks.run_files import print_run_files, shared_output_dir
from diffusion.tasks.sample_and_score import (
    log_unavailable,
    prepare_evaluator,
    sample_save_score,
    stop_sampling_on_signal,
)


def sample_or_evaluate(parts: Components, run: RunSettings, dist: DistributedContext) -> float | None:
    """Sample ``run.source`` (a run directory or a ``.safetensors``) with the sampler and evaluator the app built
    (the run's own settings under this command line's keys); returns the first score, if any."""
    output_dir = shared_output_dir(dist, run.output_dir)
    source = run.source
    assert source is not None, "the app refuses task=sample without run_dir"
    sampler = parts.make_sampler(parts.model, source if source.is_dir() else None, dist)
    width = check_ode_scores(run.likelihood, run.straightness, parts.method, parts.data)
    if source.suffix == ".safetensors":
        sampler.load_weights(source)
        loaded = "exported weights"
    else:
        best = sampler.load_checkpoint(parts.make_file_manager(source), "best")
        loaded = f"best checkpoint, epoch {checkpoint.epoch(best)}"
    if dist.is_main:
        prepare_evaluator(parts.evaluator, parts.data)
        run.save_config(output_dir)
    with (FileLogger(output_dir) if dist.is_main else NullLogger()) as logger:
        logger.log(f"{run.label}: {source} ({loaded})")
        log_unavailable(parts.evaluator, logger)
        scores = sample_or_stop(source, sampler, parts.evaluator, parts.data, output_dir, logger)
        if dist.is_main:  # the likelihood and straightness, when asked, beside the evaluator's scores
            with exit_on_failure(), stop_sampling_on_signal(source):
                entries = ode_scores(run.likelihood, run.straightness, width, sampler, parts.data, run.seed, logger)
            add_to_eval_json(output_dir, entries)
    dist.close()
    if dist.is_main:
        print_run_files(output_dir)
    return None if not scores else next(iter(scores.values()))


def sample_or_stop(source: Path, *args: Any) -> dict[str, float] | None:
    """``sample_save_score(*args)``; a stop signal ends the process with one line naming what was kept
    (``source``: the checkpoints or weights sampled)."""
    with exit_on_failure(), stop_sampling_on_signal(source):
        return sample_save_score(*args)

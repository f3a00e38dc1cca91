"""``task=posthoc_ema``: reconstruct a run's EMA at other lengths from its snapshots (EDM2 Sec. 3), export each
(``ema_std_<s>.safetensors``, samplable with ``task=sample run_dir=<file>``), and with an evaluator score each
(``std_<s>/eval.json``) into one table and plot: the EMA-length sweep without retraining."""

from __future__ import annotations

from diffusion.loggers import FileLogger
from diffusion.storage.export import write_weights
from diffusion.storage.file_manager import FileManager
from diffusion.tasks.components import Components, RunSettings
from diffusion.tasks.run_files import print_run_files
from diffusion.tasks.sample import sample_or_stop
from diffusion.tasks.sample_and_score import log_unavailable, prepare_evaluator, write_posthoc_table
from diffusion.training.posthoc_ema import reconstruct


def posthoc_ema(parts: Components, run: RunSettings) -> float | None:
    """One reconstruction per ``run.ema_stds`` from ``run.source``'s snapshots; returns the best first score, if
    scored. ``run.config`` is the source run's config, stored with each exported set of weights."""
    source, output_dir = run.source, run.output_dir
    assert source is not None, "the app refuses task=posthoc_ema without run_dir"
    stds = [float(s) for s in run.ema_stds]
    snapshots = FileManager(source).ema_snapshots()
    weights = reconstruct(snapshots, stds)  # refuses a std outside (0, 0.28), naming ema.std
    prepare_evaluator(parts.evaluator, parts.data)
    run.save_config(output_dir)
    rows = []
    with FileLogger(output_dir) as logger:
        log_unavailable(parts.evaluator, logger)
        for std, state in zip(stds, weights):
            write_weights(state, run.config, output_dir / f"ema_std_{std:g}.safetensors",
                          kind=f"posthoc std={std:g}", step=int(snapshots[-1]["step"]))
            sampler = parts.make_sampler(parts.model, source)
            sampler.model.load_state_dict(state)
            logger.log(f"post-hoc EMA std={std:g} (from {len(snapshots)} snapshots)")
            scores = sample_or_stop(source, sampler, parts.evaluator, parts.data, output_dir / f"std_{std:g}", logger)
            rows.append((std, scores))
        write_posthoc_table(rows, output_dir)
    print_run_files(output_dir)
    scored = [next(iter(scores.values())) for _, scores in rows if scores]
    return min(scored) if scored else None

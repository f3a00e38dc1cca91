"""Where along the noise levels a trained network is weak: its denoising error at each level, for one or more runs.

For each run (its best checkpoint's EMA weights, built from the run's own config) and each of ``--levels`` noise
levels sigma (the first run's method's schedule at the centres of equal bands of its timesteps, or log-spaced over
its [sigma_min, sigma_max] where it has no discrete schedule), the mean squared error per element of the method's
denoiser D(y + sigma n; sigma) against the clean sample y: the first ``--samples`` samples of the validation split
with their labels, and the same noise n for every run (paired). Every method offers D (the sigma-space denoiser its
solvers step), so runs of different methods and networks compare on one table.

A run's held-out loss weights the levels by the method's loss weighting: min-SNR-5 on v or x0 gives the highest
levels, where a sample's layout and class are decided, a weight of SNR (below 0.05 at the top of the cosine
schedule), so two networks' held-out losses can rank opposite to their samples. This table shows each level alone.

    python -m experiments.tools.denoising_error outputs/run_a outputs/run_b --levels 8 --samples 512
    python -m experiments.tools.denoising_error RUN --out experiments/tools/denoising_error.md
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from diffusion.app.build import NO_EVALUATOR, build
from diffusion.app.run_config import load_source_config
from diffusion.methods.base import BaseMethod
from diffusion.runtime.checks import ConfigError
from diffusion.storage import checkpoint
from diffusion.storage.file_manager import FileManager
from experiments.lib import describe_machine, markdown_table, non_negative_int, reproduce_command, set_threads, \
    shown_path, write_results


class TrainedRun:
    """A run's network (best checkpoint, EMA weights), method and validation split, built from its config."""

    def __init__(self, run_dir: Path) -> None:
        parts = build(load_source_config(run_dir), evaluator=NO_EVALUATOR)  # as task=evaluate, scoring nothing
        parts.model.load_state_dict(checkpoint.ema_weights(FileManager(run_dir).load("best")))
        self.name, self.model, self.method, self.data = run_dir.name, parts.model.eval(), parts.method, parts.data

    def validation(self, count: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The first ``count`` validation samples as the network sees them, and their labels when it takes them."""
        splits = self.data.load()
        labels = splits.val_labels if getattr(self.model, "num_classes", 0) else None
        return self.data.prepare_batch(splits.val[:count]), None if labels is None else labels[:count]

    @torch.no_grad()
    def errors(self, sigmas: Sequence[float], samples: int, seed: int, batch_size: int = 256) -> list[float]:
        """Mean squared error per element of D(y + sigma n; sigma) against y at each sigma."""
        y, labels = self.validation(samples)
        noise = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed))
        result = []
        for sigma in sigmas:
            total = 0.0
            for start in range(0, len(y), batch_size):
                part = slice(start, start + batch_size)
                kwargs = {} if labels is None else {"y": labels[part]}

                def network(x_in: torch.Tensor, t: torch.Tensor, kwargs=kwargs) -> torch.Tensor:
                    return self.model(x_in, t, **kwargs)

                denoised = self.method.denoise(network, y[part] + sigma * noise[part], sigma)
                total += float(((denoised.float() - y[part]) ** 2).sum())
            result.append(total / y.numel())
        return result


def noise_levels(method: BaseMethod, count: int) -> list[float]:
    """``count`` sigmas: the method's discrete schedule at the centres of ``count`` equal bands of its timesteps (the
    levels it trains on, uniformly in t), or for a method without one (EDM and its kin) log-spaced over
    [sigma_min, sigma_max]. Infinite levels (a flow's pure-noise end) are left out."""
    try:
        schedule = method.schedule_sigmas().tolist()
    except NotImplementedError:
        low, high = math.log(method.sigma_min), math.log(method.sigma_max)
        return [math.exp(low + (high - low) * (k + 0.5) / count) for k in range(count)]
    picked = [schedule[min(len(schedule) - 1, int((k + 0.5) * len(schedule) / count))] for k in range(count)]
    return [sigma for sigma in picked if math.isfinite(sigma)]


def table(runs: Sequence[TrainedRun], sigmas: Sequence[float], errors: Sequence[Sequence[float]]) -> list[str]:
    """One row per level: each run's error, and after the first run its ratio to the first's."""
    header = ["sigma", runs[0].name, *(f"{run.name} (/ first)" for run in runs[1:])]
    rows = []
    for i, sigma in enumerate(sigmas):
        first = errors[0][i]
        rows.append([f"{sigma:.3g}", f"{first:.4g}",
                     *(f"{e[i]:.4g} ({e[i] / first:.2f}x)" if first > 0 else f"{e[i]:.4g}" for e in errors[1:])])
    return markdown_table(header, rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (each with checkpoints/best.pt or last.pt)")
    parser.add_argument("--levels", type=non_negative_int, default=8,
                        help="noise levels (default 8): the first run's schedule at band centres, or log-spaced")
    parser.add_argument("--samples", type=non_negative_int, default=512,
                        help="validation samples per level (default 512)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the noise, shared by every run")
    parser.add_argument("--out", type=Path, help="also write a markdown report here (default: print the table only)")
    parser.add_argument("--threads", type=non_negative_int, default=None,
                        help="CPU threads (default: torch's; 1 is fastest on cores other jobs keep busy)")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    if args.levels < 1 or args.samples < 1:
        parser.error("--levels and --samples must be at least 1")
    try:
        runs = [TrainedRun(run_dir) for run_dir in args.runs]
        sigmas = noise_levels(runs[0].method, args.levels)
    except (ConfigError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    lines = table(runs, sigmas, [run.errors(sigmas, args.samples, args.seed) for run in runs])
    print("\n".join(lines))
    if args.out is not None:
        text = ["# Denoising error per noise level", "", describe_machine().line(), "",
                f"Runs: {', '.join(f'`{shown_path(path)}`' for path in args.runs)}; the first {args.samples} "
                "validation samples, one noise draw shared by the runs; mean squared error per element of "
                "D(y + sigma n; sigma) against y.", "", *lines, "",
                f"Reproduce: `{reproduce_command('experiments.tools.denoising_error')}`", ""]
        write_results(args.out, "\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())

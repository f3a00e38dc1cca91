"""Every evaluator on one default run: does each rank an undertrained checkpoint, the trained one and real data in
that order, and what does each feature network cost per 1,000 samples on this CPU.

1. The default run (``python run.py``, or ``--run-dir``) and the same config stopped after ``--undertrained-epochs``
   (or ``--undertrained-run-dir``); each saves its best checkpoint's 500 samples (``samples.npz``, DDIM-50).
2. Both sample sets scored in this process with every evaluator this machine can run, against the same training
   reference and the same held-out split: the digit classifier always; DINOv2 (``--dinov2 DIR --dinov2-sha256``),
   CLIP for CMMD (``--clip DIR --clip-sha256``) and Inception (``--inception FILE``) where their weights are on
   disk, else a "not run" row with the reason. ``--quick`` adds tiny random stand-ins of DINOv2 and CLIP: they
   prove the code path, their ranks mean nothing.
3. Each feature network's forward pass timed on a few images at its protocol's input size, as seconds per 1,000
   samples; the pretrained ViT-L/14 architectures are timed with random weights where the real ones are absent
   (the cost does not depend on the weights' values).

Bar: for each evaluator that ran on real weights, main score undertrained > trained > real-data floor.

    python -m experiments.benchmarks.evaluators --threads 1 --out experiments/benchmarks/evaluators_cpu.md
    python -m experiments.benchmarks.evaluators --quick --out /tmp/evaluators.md    # toy run: proves it works
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from diffusion.data import DigitsData
from diffusion.evaluation.classifier import load_digit_classifier
from diffusion.evaluation.cmmd import CMMDEvaluator
from diffusion.evaluation.digits import DigitsEvaluator
from diffusion.evaluation.dinov2 import EDM2_SIZE, DINOv2Evaluator
from diffusion.evaluation.evaluators import FeatureEvaluator
from diffusion.evaluation.inception import InceptionEvaluator, inception_unavailable_reason
from diffusion.evaluation.pretrained import find_weights_file
from experiments.lib import QUICK_RUN, add_common_flags, checks_report, describe_machine, finish_report, fmt, \
    markdown_table, reproduce_command, run_into, set_threads, shown_path, work_dir

NUM_SAMPLES = 500  # the default digits evaluator's count: each run's samples.npz holds this many
QUICK_SAMPLES = 40
# Both checkpoints are sampled with DDIM-50 (deterministic, eta = 0): the default DDPM-1000 costs 20x the network
# evaluations, half an hour per 500 samples on a busy shared core; the ranking asked for is of the checkpoints.
SAMPLER = ("sampler.solver=ddim", "sampler.steps=50")
TIMED_IMAGES = 8  # images per timed forward pass (after one warm-up pass)
# The pretrained architectures (facebook/dinov2-large, openai/clip-vit-large-patch14-336), timed with random weights.
VIT_L14 = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "patch_size": 14}
TINY_VIT = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
            "patch_size": 14, "image_size": 28}


class Entry(NamedTuple):
    """One evaluator of the comparison: its name, the score it is ranked by, and how to make it (None: not run)."""

    name: str
    metric: str
    make: Callable[[], FeatureEvaluator] | None
    note: str


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_flags(parser, out_help="also write the markdown report here")
    parser.add_argument("--run-dir", type=Path, help="the trained default run to score (default: train it now)")
    parser.add_argument("--undertrained-run-dir", type=Path, help="the undertrained run (default: train it now)")
    parser.add_argument("--undertrained-epochs", type=int, default=3, help="trainer.epochs of the undertrained run")
    parser.add_argument("--work-dir", type=Path, help="where the runs go (default: outputs/benchmarks/)")
    for name, what in (("dinov2", "directory of facebook/dinov2-large"),
                       ("clip", "directory of openai/clip-vit-large-patch14-336"),
                       ("inception", "weights-inception-2015-12-05-6726825d.pth")):
        parser.add_argument(f"--{name}", type=Path, help=f"the {what} (default: the evaluator's default place)")
        parser.add_argument(f"--{name}-sha256", help="its weights file's sha256 (inception: torch-fidelity's)")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------------------- runs


def sample_sets(args: argparse.Namespace) -> tuple[dict[str, torch.Tensor], str]:
    """The undertrained and trained runs' samples ``(500, 1, 8, 8)`` in [-1, 1], and how they were made."""
    work = (args.work_dir or work_dir("benchmarks", "evaluators")).resolve()
    count = sample_count(args)
    quick = [o for o in QUICK_RUN if not o.startswith(("trainer.epochs", "evaluator.num_samples"))]
    base = [*quick, "evaluator.floor_draws=4"] if args.quick else ["trainer.progress=false", *SAMPLER]
    base.append("evaluator.bootstrap=0")  # the runs' own scores are not read: this script scores their samples
    base += [f"evaluator.num_samples={count}", f"sampler.num_samples={count}"]
    short = 1 if args.quick else args.undertrained_epochs
    plans = {"undertrained": (args.undertrained_run_dir, [f"trainer.epochs={short}"]),
             "trained": (args.run_dir, ["trainer.epochs=4"] if args.quick else [])}
    samples, made = {}, []
    for label, (given, epochs) in plans.items():
        run_dir = given.resolve() if given is not None else work / label
        if given is None:
            seconds = run_into([*base, *epochs], run_dir)
            made.append(f"{label}: `python run.py {' '.join([*base, *epochs])}` ({seconds / 60:.1f} min)")
        else:  # how it was made: its own overrides.yaml (a list of key=value lines)
            overrides = (run_dir / "overrides.yaml").read_text().replace("- ", "").split()
            made.append(f"{label}: {shown_path(run_dir)}, made by `python run.py {' '.join(overrides)}`")
        with np.load(run_dir / "samples.npz", allow_pickle=False) as archive:
            samples[label] = torch.from_numpy(archive["samples"][:count])
    return samples, "; ".join(made)


# ------------------------------------------------------------------------------------------------- evaluators


def sample_count(args: argparse.Namespace) -> int:
    return QUICK_SAMPLES if args.quick else NUM_SAMPLES


def options(args: argparse.Namespace) -> dict[str, Any]:
    """The evaluators' shared settings: the default run's sample count, floors over draws, bootstrap errors."""
    draws, resamples = (8, 0) if args.quick else (128, 50)
    return {"num_samples": sample_count(args), "floor_draws": draws, "bootstrap": resamples}


def entries(args: argparse.Namespace, stand_ins: Path | None) -> list[Entry]:
    """Every evaluator: the digit classifier always; the pretrained ones where their weights are on this machine
    (the flags' paths, else each evaluator's default place) with their sha256 given."""
    common = options(args)
    found = [Entry("digits", "fd", lambda: DigitsEvaluator(**common), "shipped digit classifier (always)")]
    for name, metric, kind, flag in (("dinov2", "fd_dinov2", DINOv2Evaluator, "dinov2"),
                                     ("cmmd", "cmmd", CMMDEvaluator, "clip")):
        folder, digest = getattr(args, flag), getattr(args, f"{flag}_sha256")
        probe = kind(weights=None if folder is None else str(folder), weights_sha256=digest, **common)
        if importlib.util.find_spec("transformers") is None:
            found.append(Entry(name, metric, None, "not run: transformers not installed"))
        elif find_weights_file(probe.weights) is None:
            found.append(Entry(name, metric, None, f"not run: no weights in {shown_path(probe.weights)} (--{flag})"))
        elif digest is None:
            found.append(Entry(name, metric, None, f"not run: no --{flag}-sha256 for {shown_path(probe.weights)}"))
        else:
            found.append(Entry(name, metric, lambda probe=probe: probe, f"weights {shown_path(probe.weights)}"))
    inception = InceptionEvaluator(weights_path=None if args.inception is None else str(args.inception),
                                   weights_sha256=args.inception_sha256, **common)
    if inception_unavailable_reason(inception.weights_path) is not None:
        note = f"not run: torchmetrics/torch-fidelity or {shown_path(inception.weights_path)} missing (--inception)"
        found.append(Entry("inception", "fid", None, note))
    else:
        found.append(Entry("inception", "fid", lambda: inception, f"weights {shown_path(inception.weights_path)}"))
    if stand_ins is not None:
        for name, metric, kind in (("dinov2", "fd_dinov2", DINOv2Evaluator), ("cmmd", "cmmd", CMMDEvaluator)):
            folder = stand_ins / name
            digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
            resize = {"resize": 28} if name == "dinov2" else {}
            found.append(Entry(f"{name} (stand-in)", metric, lambda kind=kind, folder=folder, digest=digest,
                               resize=resize: kind(weights=str(folder), weights_sha256=digest, **resize, **common),
                               "tiny random network: proves the path, ranks mean nothing"))
    return found


def save_stand_ins(folder: Path) -> None:
    """Tiny random DINOv2 and CLIP vision networks in the Hugging Face layout (for ``--quick``)."""
    import transformers

    torch.manual_seed(0)
    transformers.Dinov2Model(transformers.Dinov2Config(**TINY_VIT)).save_pretrained(folder / "dinov2")
    config = transformers.CLIPVisionConfig(**TINY_VIT, projection_dim=8)
    transformers.CLIPVisionModelWithProjection(config).save_pretrained(folder / "cmmd")


def rank_rows(found: Sequence[Entry], samples: dict[str, torch.Tensor]) -> tuple[list[list[str]], list[tuple]]:
    """One row per evaluator: the undertrained and trained scores, the real-data floor, whether the order holds."""
    data, rows, checks = DigitsData(), [], []
    for entry in found:
        if entry.make is None:
            rows.append([entry.name, entry.metric, "not run", "", "", "", entry.note])
            continue
        evaluator = entry.make()
        evaluator.prepare(data)
        scores = {label: evaluator.evaluate(images)[entry.metric] for label, images in samples.items()}
        under, trained = scores["undertrained"], scores["trained"]
        ordered = under.value > trained.value > (trained.floor if trained.floor is not None else float("inf"))
        rows.append([entry.name, entry.metric, f"{fmt(under.value)} ± {fmt(under.std_error, '.2g')}",
                     f"{fmt(trained.value)} ± {fmt(trained.std_error, '.2g')}",
                     f"{fmt(trained.floor)} ± {fmt(trained.floor_std, '.2g')}", "yes" if ordered else "no", entry.note])
        if "stand-in" not in entry.name:
            order = f"{fmt(under.value)} > {fmt(trained.value)} > {fmt(trained.floor)}"
            checks.append((ordered, f"{entry.name} ranks undertrained > trained > real-data floor on {entry.metric}: "
                                    + order))
    return rows, checks


# ------------------------------------------------------------------------------------------------------- cost


def seconds_per_1000(forward: Callable[[torch.Tensor], Any], images: torch.Tensor) -> float:
    """Wall seconds per 1,000 images of ``forward``, from one pass over ``images`` after a warm-up pass."""
    with torch.inference_mode():
        forward(images[:1])
        start = time.perf_counter()
        forward(images)
        return (time.perf_counter() - start) / len(images) * 1000


def cost_rows(quick: bool) -> list[list[str]]:
    """Each feature network's forward cost at its protocol's input size on this CPU."""
    import transformers

    classifier = load_digit_classifier().eval()
    classifier_input = torch.rand(256, 1, 8, 8) * 2 - 1  # the classifier is cheap: time more images
    rows = [["digit classifier", "8x8", "shipped weights", fmt(seconds_per_1000(classifier, classifier_input))]]
    vit, tiny = (TINY_VIT, " (tiny)") if quick else (VIT_L14, "")
    dinov2 = transformers.Dinov2Model(transformers.Dinov2Config(**{**vit, "image_size": 518}))
    rows.append(vit_row(f"DINOv2 ViT-L/14{tiny}", dinov2, 28 if quick else EDM2_SIZE, quick))
    clip_size = 28 if quick else 336
    clip_config = {**vit, "image_size": clip_size, "projection_dim": 768}
    clip_config |= {} if quick else {"intermediate_size": 4096}
    clip = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**clip_config))
    rows.append(vit_row(f"CLIP ViT-L/14{tiny}", clip, clip_size, quick))
    rows.append(["FID Inception-v3", "299x299", "not timed: needs torchmetrics/torch-fidelity and its weights", "n/a"])
    return rows


def vit_row(label: str, network: torch.nn.Module, size: int, quick: bool) -> list[str]:
    """A transformers vision network's cost row, timed on random images of ``size`` pixels a side."""
    images = torch.randn(2 if quick else TIMED_IMAGES, 3, size, size)
    seconds = seconds_per_1000(lambda x: network.eval()(pixel_values=x), images)
    return [label, f"{size}x{size}", "random weights, same architecture", fmt(seconds)]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    start = time.perf_counter()
    samples, made = sample_sets(args)
    stand_ins = None
    if args.quick:
        stand_ins = (args.work_dir or work_dir("benchmarks", "evaluators")).resolve() / "stand-ins"
        save_stand_ins(stand_ins)
    ranks, checks = rank_rows(entries(args, stand_ins), samples)
    table = [
        f"Samples: {made}. Each set scored by every evaluator against the same training reference and held-out "
        f"split ({sample_count(args)} samples, chunks of n = min(samples, held-out)); floor = held-out vs training "
        "over real-data draws (mean ± std):", "",
        *markdown_table(["evaluator", "metric", "undertrained ± se", "trained ± se", "real-data floor ± std",
                         "order holds", "note"], ranks),
        "", "Cost of each feature network's forward pass, seconds per 1,000 images "
        f"({2 if args.quick else TIMED_IMAGES} images timed after a warm-up; resize and normalisation not included):",
        "",
        *markdown_table(["network", "input", "weights", "s / 1,000 samples"], cost_rows(args.quick)),
    ]
    method = ("Runs trained by `run.py` as a user would; scoring in this process with the evaluators `task=evaluate` "
              "builds. A pretrained network without its weights on this machine is not run (nothing is downloaded).")
    command = reproduce_command("experiments.benchmarks.evaluators", argv)
    text, passed = checks_report("Every evaluator on one default run", describe_machine(), method, table, checks,
                                 time.perf_counter() - start, command)
    return finish_report(text, passed, args)


if __name__ == "__main__":
    sys.exit(main())

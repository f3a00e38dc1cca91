"""The four backbone families at about equal parameter counts and equal training wall time: U-Net, DiT, U-ViT and
EDM2's magnitude-preserving U-Net, on the MNIST preset's recipe (and, with ``--budget default``, the default run's).

For each budget the U-Net trains the preset's own steps; every other family trains as many optimizer steps as it
runs in the U-Net's wall time. That share comes from its training steps/s measured side by side with the U-Net's in
this process (the same batch, optimizer step and precision, interleaved rounds), so a busy shared machine slows
all families alike instead of the one training last. Each run is scored by ``python run.py`` itself on 3 disjoint
seed sets of 500 samples (FD: mean and standard deviation over the sets). The transformers train on the U-Net's
recipe (formulation, sampler) at a higher learning rate (on the MNIST budget); the EDM2 U-Net on its paper's (EDM,
Heun-18, a learning rate for magnitude-preserving weights).
Also reported: training samples/s and model FLOP/s (forward and backward, counted by ``FlopCounterMode``, one
multiply-add = 2 FLOPs) as a share of this machine's measured fp32 matmul peak (the faster of MKL's and oneDNN's
GEMM: torch runs a dense fp32 matmul in the first and convolutions in the second), for each transformer the share
its first MLP matmul alone reaches at the training batch's shape (tokens x width x 4 width) in MKL, as the model runs
it, and in oneDNN: the ceiling its matmuls put on its FLOP/s share; and a control, the U-Net's share with oneDNN off
(its convolutions as im2col and MKL GEMMs), which shows how much of the U-Net's share is oneDNN's.

    python -m experiments.benchmarks.backbones --threads 1 --out experiments/benchmarks/backbones_cpu.md
    python -m experiments.benchmarks.backbones --budget default --threads 1 --out .../backbones_default_cpu.md
    python -m experiments.benchmarks.backbones --quick --out /tmp/backbones.md     # toy runs: proves it works
    python -m experiments.benchmarks.backbones --threads 1 --train-seeds 0,1,2 --reuse ...  # 3 training seeds each
    python -m experiments.benchmarks.backbones --threads 1 --width-scale 2 ...  # timing alone, widths 2x (params 4x)
    python -m experiments.benchmarks.backbones --threads 1 --precision bf16 ...  # timing alone, bf16 autocast

With ``--train-seeds`` each family trains once per seed and its FD is the mean over those runs (each itself a mean
over the 3 evaluation sets): one training seed says how one run scores, not how the recipe does.

The targets (MNIST budget): each family's FD within 1.5x of the U-Net's, and its training FLOP/s share of the peak no
lower than the U-Net's, judged on its model FLOP/s over the U-Net's paired round by round (the median of the rounds at
least 1; the check says when rounds fall on both sides of 1: a tie at that many rounds).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import yaml
from omegaconf import OmegaConf

from diffusion.runtime.devices import Precision
from experiments.benchmarks.speed.timing import gemm_flops_per_second, interleave, matmul_flops_per_second, median, \
    onednn_gemm_flops_per_second, paired_ratio, timed
from experiments.benchmarks.speed.training import build_parts, compose_config, compose_run_config, optimizer_step, \
    step_flops_per_sample, training_batch
from experiments.lib import QUICK_RUN, Machine, add_common_flags, add_work_flags, checks_report, describe_machine, \
    finish_report, fmt, markdown_table, non_negative_int, positive_int, read_eval, reproduce_command, set_threads, \
    shown_command, spread_score, train_into, work_dir

FD_BAR = 1.5  # each family's FD at most this multiple of the U-Net's
_NOT_DIT = ("~model.patch_size", "~model.depth", "~model.hidden_size", "~model.num_heads")  # mnist_dit's DiT keys
# EDM2's own recipe: EDM's formulation (its noise labels are ln(sigma) / 4), Heun-18, and a learning rate fit for
# weights that forced weight normalisation keeps at unit scale per element (the paper's reference rates are about
# 1e-2; at the U-Net's 2e-3 its relative updates are ten times smaller: FD 30.3 against 3.7 on the default budget).
# The MNIST budget's 949 steps take 2e-2 (held-out loss 0.161 against 1e-2's 0.179, seeds 1 and 2).
_EDM2_RECIPE = ("method=edm",)
_DPM = ("method=dpm_solver", "sampler.steps=20", "sampler.timestep_spacing=trailing")  # the default budget's sampler


@dataclass(frozen=True)
class Budget:
    """One budget: the U-Net's run, each family's network (about the U-Net's parameters) and what every run shares."""

    families: dict[str, tuple[str, ...]]  # family -> run.py overrides (the first: the U-Net, the reference)
    shared: tuple[str, ...]  # training length, scoring, sampler (every family the same)
    unet_steps: int  # the U-Net's optimizer steps (the preset's)
    batch_size: int
    rounds: int  # interleaved timing rounds
    steps_per_round: int
    # family -> the config keys of its widths, which --width-scale multiplies (their values: the composed run's)
    widths: dict[str, tuple[str, ...]] = field(default_factory=dict)
    peak_size: int = 1024  # the square matmul that measures the peak

    def widened(self, scale: int) -> Budget:
        """The same budget with every family's widths ``scale`` times its own (about ``scale``^2 its parameters)."""
        if set(self.widths) != set(self.families):
            raise ValueError(f"--width-scale needs every family's width keys; this budget has {sorted(self.widths)}")
        families = {}
        for name, overrides in self.families.items():
            keys = self.widths[name]
            composed = compose_run_config([*overrides, *self.shared])
            kept = tuple(o for o in overrides if o.split("=")[0] not in keys)  # a width the overrides set: replaced
            families[name] = (*kept, *(f"{key}={OmegaConf.select(composed, key) * scale}" for key in keys))
        return replace(self, families=families)


MNIST = Budget(
    families={
        "U-Net": ("experiment=mnist",),  # 0.50M
        # The transformers at experiment=mnist_dit's learning rate of 6e-3, far above the papers' 1e-4, which serve
        # runs of hundreds of thousands of steps (the DiT, same steps: digits FD 16.7 / 10.2 / 9.7 at 1e-3 / 3e-3 /
        # 6e-3; MNIST 8.24 / 5.22 at 3e-3 / 6e-3)
        "DiT": ("experiment=mnist_dit",),  # 0.51M: patch 4, 5 blocks of width 72
        # U-ViT with Xavier / zero-output initialisation and sin-cos-initialised positions (the paper's std-0.02
        # initialisation, same network and steps: FD 54.5 ± 0.5), and min-SNR's gamma at 0.5: at gamma 5 its
        # denoising error exceeds the U-Net's most (1.2-1.3x) at sigma 0.6-2.5, levels min-SNR-5 weights by SNR < 3
        # against 5 below; a lower gamma trades low-noise accuracy for them (FD over training seeds 0-2: 9.01 at
        # gamma 5, 5.90 at 1, 5.05 at 0.5; docs/backbones.md, tools/denoising_error.py)
        "U-ViT": ("experiment=mnist_dit", "model=uvit", "model.hidden_size=88", "model.init=xavier_zero",
                  "model.position_init=sincos", "method.snr_gamma=0.5"),  # 0.51M, patch 4, 5 layers
        # 16 / 32 / 48 channels at 28 / 14 / 7. The first shape, 21 / 42 / 42 (0.52M), ran at 0.58x the U-Net's
        # steps/s and reached FD 21.2 in 550 steps: a 3x3 convolution at 21 channels took longer than one at 24 here
        # (oneDNN blocks channels by 8 and 16); this one runs at about 1.05x
        "EDM2 U-Net": ("experiment=mnist_dit", "model=edm2_unet", *_NOT_DIT, "model.model_channels=16",
                       "model.channel_mults=[1,2,3]", "model.num_blocks=1", "model.attention_resolutions=[7]",
                       "model.channels_per_head=16", *_EDM2_RECIPE, "trainer.lr=2.0e-2", "~method.prediction",
                       "method.loss_weighting=edm", "sampler.steps=18"),  # 0.50M
    },
    shared=("evaluator.num_samples=500", "evaluator.seeds=[0,1,2]", "trainer.progress=false"),
    unet_steps=900, batch_size=128, rounds=9, steps_per_round=3,
    widths={"U-Net": ("model.base_channels",), "DiT": ("model.hidden_size",), "U-ViT": ("model.hidden_size",),
            "EDM2 U-Net": ("model.model_channels", "model.channels_per_head")})
DEFAULT = Budget(
    families={
        # DPM-Solver++(2M) 20 steps for the DDPM-trained families: the default DDPM-1000 would cost minutes per set.
        "U-Net": _DPM,  # the default run's network: 0.91M
        # The transformers at digits_dit's learning rate (6e-3; until 2026-12-06 this budget ran them at 1e-3: DiT FD
        # 16.7, U-ViT with the paper's initialisation 27.8), the U-ViT initialised as on the MNIST budget
        "DiT": ("experiment=digits_dit", "model.hidden_size=124", *_DPM),  # 0.92M, patch 2
        "U-ViT": ("experiment=digits_dit", "model=uvit", "model.depth=5", "model.hidden_size=120",
                  "model.init=xavier_zero", "model.position_init=sincos", *_DPM),  # 0.93M
        "EDM2 U-Net": ("model=edm2_unet", "model.model_channels=30", "model.channel_mults=[1,2]", "model.num_blocks=2",
                       "model.attention_resolutions=[4]", "model.channels_per_head=30", *_EDM2_RECIPE,
                       "trainer.lr=1.0e-2"),  # 0.89M
    },
    shared=("evaluator.num_samples=500", "evaluator.seeds=[0,1,2]", "trainer.progress=false", "trainer.precision=fp32"),
    unet_steps=1300, batch_size=128, rounds=5, steps_per_round=3)
QUICK = Budget(
    families={"U-Net": QUICK_RUN[:2],
              "DiT": ("model=dit", "model.depth=1", "model.hidden_size=32", "model.num_heads=2"),
              "U-ViT": ("model=uvit", "model.depth=1", "model.hidden_size=32", "model.num_heads=2"),
              "EDM2 U-Net": ("model=edm2_unet", "model.model_channels=8", "model.channel_mults=[1,2]",
                             "model.num_blocks=1", "model.attention_resolutions=[4]", "model.channels_per_head=8")},
    shared=("evaluator.num_samples=20", "evaluator.seeds=[0,1,2]", "trainer.progress=false", "method.num_timesteps=20",
            "trainer.precision=fp32"),
    unet_steps=4, batch_size=64, rounds=2, steps_per_round=1, peak_size=256,  # bf16 is emulated on AVX2 CPUs
    widths={"U-Net": ("model.base_channels",), "DiT": ("model.hidden_size",), "U-ViT": ("model.hidden_size",),
            "EDM2 U-Net": ("model.model_channels", "model.channels_per_head")})
BUDGETS = {"mnist": MNIST, "default": DEFAULT}


@dataclass
class Throughput:
    """Side-by-side training speed of one family: steps/s per round, FLOPs per sample, parameters, and for a
    transformer the FLOP/s per round of its first MLP matmul alone at the training batch's shape."""

    rates: list[float]
    flops_per_sample: float
    params: int
    mlp_gemm_rates: list[float] | None  # in MKL, where torch runs a dense fp32 linear
    onednn_gemm_rates: list[float] | None  # the same matmul in oneDNN, the convolutions' library


@dataclass
class Timing:
    """The families' throughput, the fp32 peak per round and the control: the U-Net's FLOP/s share with its
    convolutions in MKL (oneDNN off), the library the transformers' linears run in."""

    families: dict[str, Throughput]
    peak: list[float]
    unet_without_onednn: float | None  # fp32 only


def measure_throughput(budget: Budget, precision: Precision = "fp32") -> Timing:
    """Every family's optimizer steps/s on one batch (forward, backward, AdamW step: what differs between families;
    the Trainer around it is the same), interleaved with the matmul peak in ``precision``; in fp32 also each
    transformer's MLP matmul in MKL (a ceiling on its FLOP/s share as torch runs it) and in oneDNN, and the U-Net's
    step with oneDNN off (the control). bf16: autocast, as ``trainer.precision=bf16`` trains."""
    device = torch.device("cpu")
    steppers, gemms, parts_of, batches = {}, {}, {}, {}
    for name, overrides in budget.families.items():
        training = [o for o in budget.shared if not o.startswith("evaluator.")]  # timing scores nothing
        cfg = compose_config([*overrides, *training, "trainer.precision=fp32"])
        parts = parts_of[name] = build_parts(cfg)
        model = parts.model
        batches[name] = training_batch(parts, budget.batch_size)
        step = optimizer_step(parts, budget.batch_size, device, precision)
        step()  # warm-up
        steppers[name] = lambda step=step: budget.steps_per_round / timed(
            lambda: [step() for _ in range(budget.steps_per_round)], device)
        if hasattr(model, "token_layout") and precision == "fp32":
            layout = model.token_layout()
            linear = layout.blocks[0].mlp[0]  # the MLP's first layer: width -> mlp_ratio x width
            shape = (budget.batch_size * (layout.prefix + layout.side**2), linear.in_features, linear.out_features)
            gemms[f"gemm {name}"] = lambda shape=shape: gemm_flops_per_second(shape, torch.float32, device)
            gemms[f"oneDNN gemm {name}"] = lambda shape=shape: onednn_gemm_flops_per_second(shape)
    unet_step = steppers["U-Net"]

    def unet_without_onednn() -> float:
        with warnings.catch_warnings():  # flags() also sets oneDNN's TF32 switch, which warns without an Intel GPU
            warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")
            with torch.backends.mkldnn.flags(enabled=False):  # convolutions as im2col + MKL GEMMs
                return unet_step()

    controls = {"U-Net without oneDNN": unet_without_onednn} if precision == "fp32" else {}
    for warm_up in controls.values():
        warm_up()  # other kernels
    dtype = torch.float32 if precision == "fp32" else torch.bfloat16
    runs = interleave({**steppers, **gemms, **controls,
                       "peak": lambda: matmul_flops_per_second(budget.peak_size, dtype, device)}, budget.rounds)
    result = {}
    for name, parts in parts_of.items():
        flops = step_flops_per_sample(parts.model, parts.method, batches[name], device, "fp32")
        result[name] = Throughput(runs[name], flops, sum(p.numel() for p in parts.model.parameters()),
                                  runs.get(f"gemm {name}"), runs.get(f"oneDNN gemm {name}"))
    unet_flops = budget.batch_size * result["U-Net"].flops_per_sample
    control = median(runs["U-Net without oneDNN"]) * unet_flops / median(runs["peak"]) if controls else None
    return Timing(result, runs["peak"], control)


@dataclass
class Row:
    family: str
    params: int
    steps: str  # the optimizer steps its runs trained ("2300", or "2300/2322" when reused runs differ)
    speed_ratio: float  # steps/s against the U-Net's (median of per-round ratios)
    samples_per_second: float
    flop_share: float  # model FLOP/s over the matmul peak (fp32; bf16 when timed in bf16)
    flop_rounds: list[float]  # model FLOP/s over the U-Net's, round by round (both measured in each round)
    mlp_gemm_share: float | None  # a transformer's MLP matmul alone over the peak (MKL, as the model runs it)
    onednn_gemm_share: float | None  # the same matmul in oneDNN
    fds: list[float]  # per training seed: the mean over the evaluation's seed sets
    stds: list[float]  # per training seed: the standard deviation over those sets
    floor: float | None
    minutes: float  # the runs' wall time (training and scoring, as their logs measured it)

    @property
    def fd(self) -> float:
        """The mean over the training seeds of each run's FD: what the bar compares."""
        return statistics.fmean(self.fds)


def reusable_steps(run_dir: Path, overrides: Sequence[str]) -> int | None:
    """The optimizer steps of the scored run in ``run_dir`` when ``overrides`` compose its configuration now: its
    ``config.yaml`` equal in every key but the training length (``trainer.max_steps``, which replaces
    ``trainer.epochs``), ``num_threads`` and the keys the build fills from the data (absent or null when composed).
    None otherwise: a family whose command changed trains again rather than reporting the old run's score under the
    new command."""
    if not (run_dir / "eval.json").is_file():
        return None
    now = OmegaConf.to_container(compose_run_config(overrides), resolve=True)
    stored = yaml.safe_load((run_dir / "config.yaml").read_text())
    steps = int(stored["trainer"]["max_steps"])
    for config in (now, stored):
        config.pop("num_threads", None)
        config["trainer"].pop("max_steps", None)
        config["trainer"].pop("epochs", None)

    def same(composed: object, kept: object) -> bool:
        if isinstance(composed, dict) and isinstance(kept, dict):
            return set(composed) <= set(kept) and all(same(composed[k], kept[k]) for k in composed)
        return composed is None or composed == kept

    return steps if same(now, stored) else None


def seed_list(text: str) -> tuple[int, ...]:
    """``--train-seeds``: distinct whole numbers >= 0, comma-separated."""
    seeds = tuple(non_negative_int(part.strip()) for part in text.split(","))
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"each seed once, got {text!r}")
    return seeds


def seeded_run(work: Path, family: str, seed: int) -> tuple[Path, tuple[str, ...]]:
    """The run directory of ``family`` trained with ``seed`` and the overrides that seed adds: seed 0 (the config's
    default) is ``<family>`` with none, so runs of a single-seed invocation stay where they were."""
    run_dir = work / family.lower().replace(" ", "_").replace("-", "")
    return (run_dir, ()) if seed == 0 else (run_dir.with_name(f"{run_dir.name}_seed{seed}"), (f"seed={seed}",))


def speed_rows(budget: Budget, timing: Timing) -> list[Row]:
    """The families' rows with their timing's figures alone (no runs yet: no steps, scores or minutes)."""
    reference, peak = timing.families["U-Net"].rates, timing.peak
    rows = []
    for name in budget.families:
        figures = timing.families[name]
        samples = median(figures.rates) * budget.batch_size
        gemm, onednn = (None if rates is None else median(rates) / median(peak)
                        for rates in (figures.mlp_gemm_rates, figures.onednn_gemm_rates))
        per_step = figures.flops_per_sample / timing.families["U-Net"].flops_per_sample
        flop_rounds = [rate / unet_rate * per_step for rate, unet_rate in zip(figures.rates, reference, strict=True)]
        rows.append(Row(name, figures.params, "", paired_ratio(figures.rates, reference), samples,
                        samples * figures.flops_per_sample / median(peak), flop_rounds, gemm, onednn, [], [], None,
                        0.0))
    return rows


def train_and_score(budget: Budget, work: Path, reuse: bool,
                    train_seeds: Sequence[int] = (0,)) -> tuple[list[Row], float]:
    """Time the families side by side, then train and score each once per training seed (``seed=``); the rows and
    the control's FLOP/s share (the U-Net with oneDNN off)."""
    timing = measure_throughput(budget)
    rows = []
    for row in speed_rows(budget, timing):
        overrides = budget.families[row.family]
        granted = max(1, round(budget.unet_steps * row.speed_ratio))
        steps, fds, stds, floor, seconds = set(), [], [], None, 0.0
        for seed in train_seeds:
            run_dir, seeded = seeded_run(work, row.family, seed)
            command = [*overrides, *seeded, *budget.shared]
            kept = reusable_steps(run_dir, command) if reuse else None
            if kept is None:
                seconds += train_into([*command, f"trainer.max_steps={granted}"], run_dir)
            steps.add(granted if kept is None else kept)  # a reused run: the steps it trained, not today's share
            fd, std, floor = spread_score(read_eval(run_dir))
            fds.append(fd)
            stds.append(std)
        rows.append(replace(row, steps="/".join(map(str, sorted(steps))), fds=fds, stds=stds, floor=floor,
                            minutes=seconds / 60))
    return rows, timing.unet_without_onednn


def report(rows: Sequence[Row], unet_without_onednn: float,
           peak_size: int = 1024) -> tuple[list[str], list[tuple[bool, str]]]:
    """The table, the control's line and the checks. With one training seed the FD column is that run's mean ±
    standard deviation over the evaluation's seed sets; with several, the mean ± standard deviation over the training
    seeds of the runs' means, each run's own in the column before it."""
    several = len(rows[0].fds) > 1
    fd_header = f"FD over {len(rows[0].fds)} training seeds (mean ± std)" if several else "FD (mean ± std of 3 sets)"
    header = ["family", "params", "steps/s vs U-Net", "optimizer steps", "train samples/s", "FLOP/s share of fp32 peak",
              "its MLP matmul alone: MKL / oneDNN",
              *(["FD per training seed (each: mean ± std of its sets)"] if several else []), fd_header,
              "FD / U-Net's", "FD floor", "run minutes"]
    unet = rows[0]
    cells = []
    for r in rows:
        per_seed = [" / ".join(f"{fmt(fd)} ± {fmt(std, '.2g')}" for fd, std in zip(r.fds, r.stds))] if several else []
        spread = statistics.stdev(r.fds) if several else r.stds[0]
        cells.append([r.family, f"{r.params / 1e6:.3f}M", f"{r.speed_ratio:.2f}x", r.steps, fmt(r.samples_per_second),
                      f"{r.flop_share:.1%}", gemm_cell(r), *per_seed,
                      f"{fmt(r.fd)} ± {fmt(spread, '.2g')}", f"{r.fd / unet.fd:.2f}x", fmt(r.floor),
                      f"{r.minutes:.1f}" if r.minutes else "reused"])
    checks = []
    for r in rows[1:]:
        over = f"; means over {len(r.fds)} training seeds" if several else ""
        checks.append((r.fd <= FD_BAR * unet.fd, f"{r.family} FD within {FD_BAR:g}x of the U-Net's at equal parameters "
                       f"and wall time: {r.fd:.3g} vs {unet.fd:.3g} ({r.fd / unet.fd:.2f}x{over})"))
        checks.append(flop_check(r, unet))
    return [*markdown_table(header, cells), "", control_line(unet, unet_without_onednn, peak_size)], checks


def timing_report(rows: Sequence[Row], unet_without_onednn: float | None, precision: Precision = "fp32",
                  peak_size: int = 1024) -> tuple[list[str], list[tuple[bool, str]]]:
    """The table of a timing alone (``--width-scale``, ``--precision bf16``: nothing trains), the control's line (fp32)
    or the bf16 peak's, and the FLOP/s checks."""
    header = ["family", "params", "steps/s vs U-Net", "train samples/s", f"FLOP/s share of {precision} peak",
              "its MLP matmul alone: MKL / oneDNN", "FLOP/s / U-Net's, paired rounds: median (range)"]
    cells = [[r.family, f"{r.params / 1e6:.3f}M", f"{r.speed_ratio:.2f}x", fmt(r.samples_per_second),
              f"{r.flop_share:.1%}", gemm_cell(r),
              f"{median(r.flop_rounds):.2f}x ({min(r.flop_rounds):.2f}-{max(r.flop_rounds):.2f}x)"] for r in rows]
    peak = (control_line(rows[0], unet_without_onednn, peak_size) if unet_without_onednn is not None else
            f"The peak is a {peak_size}^3 bf16 matmul's FLOP/s (oneDNN) in each round; the families train under bf16 "
            "autocast.")
    return [*markdown_table(header, cells), "", peak], [flop_check(r, rows[0]) for r in rows[1:]]


def control_line(unet: Row, unet_without_onednn: float, peak_size: int = 1024) -> str:
    """What the control measured: the U-Net's FLOP/s share with its convolutions in MKL, against in oneDNN."""
    return (f"Control: the U-Net with oneDNN off (`torch.backends.mkldnn.flags(enabled=False)`: its convolutions as "
            f"im2col and MKL GEMMs, the library a dense fp32 linear runs in, so the transformers' too) reaches "
            f"{unet_without_onednn:.1%} of the peak against {unet.flop_share:.1%} in oneDNN. The peak is the faster "
            f"of MKL's and oneDNN's {peak_size}^3 fp32 GEMM in each round.")


def flop_check(row: Row, unet: Row) -> tuple[bool, str]:
    """The FLOP/s bar: the family's model FLOP/s over the U-Net's, paired round by round (each round times both,
    so load that changes between rounds falls on both); it holds when the median round's is at least 1, and the
    text says so when the rounds fall on both sides of 1 (a tie at this many rounds)."""
    low, high, middle = min(row.flop_rounds), max(row.flop_rounds), median(row.flop_rounds)
    tie = "; a tie: rounds on both sides of 1" if low < 1 <= high else ""
    return middle >= 1, (f"{row.family} training FLOP/s share of the peak no lower than the U-Net's: "
                         f"{row.flop_share:.1%} vs {unet.flop_share:.1%}; its FLOP/s over the U-Net's, paired by "
                         f"round: {middle:.2f}x, {low:.2f}-{high:.2f}x over {len(row.flop_rounds)} rounds{tie}")


def gemm_cell(row: Row) -> str:
    """A transformer's MLP matmul's shares of the peak in MKL and in oneDNN (a convolutional family has none)."""
    if row.mlp_gemm_share is None:
        return "—"
    return f"{row.mlp_gemm_share:.0%} / " + ("—" if not row.onednn_gemm_share else f"{row.onednn_gemm_share:.0%}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_flags(parser, out_help="also write the markdown report here")
    add_work_flags(parser)
    parser.add_argument("--budget", choices=tuple(BUDGETS), default="mnist",
                        help="mnist: experiment=mnist's recipe (default) | default: the default digits run's")
    parser.add_argument("--train-seeds", type=seed_list, default=(0,),
                        help="training seeds, comma-separated (default 0): each family trains once per seed "
                             "(seed=<s>, into <family>_seed<s>; seed 0 into <family>) and its FD is the mean over them")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="bf16: timing alone, nothing trained or scored, every family under bf16 autocast and the "
                             "FLOP/s shares against the bf16 matmul peak (default fp32, as the presets train)")
    parser.add_argument("--width-scale", type=positive_int, default=1,
                        help="timing alone, nothing trained or scored: every family's widths this many times the "
                             "budget's (about its square in parameters), to see whether the FLOP/s shares' order "
                             "holds at larger sizes (mnist budget)")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    budget = QUICK if args.quick else BUDGETS[args.budget]
    if args.width_scale > 1 and not budget.widths:
        parser.error(f"--width-scale: the {args.budget} budget names no width keys; use --budget mnist")
    start, machine = time.perf_counter(), describe_machine()
    if args.width_scale > 1 or args.precision != "fp32":
        return timing_alone(budget, args, machine, start, argv)
    work = (args.work_dir or work_dir("benchmarks", f"backbones-{args.budget}")).resolve()
    rows, control = train_and_score(budget, work, args.reuse, args.train_seeds)
    table, checks = report(rows, control, budget.peak_size)
    method = (f"Budget `{args.budget}`{' (--quick)' if args.quick else ''}: the U-Net trains {budget.unet_steps} "
              "optimizer steps; each other family the steps it runs in the same time, from its steps/s measured "
              f"beside the U-Net's ({budget.rounds} interleaved rounds of {budget.steps_per_round} steps, batch "
              f"{budget.batch_size}, fp32). Runs: "
              f"`{shown_command(['<family>', *budget.shared, 'trainer.max_steps=<steps>'])}`, scored by the run itself "
              "(its best EMA checkpoint)"
              + (f", once per training seed (`seed=` {', '.join(map(str, args.train_seeds))})"
                 if len(args.train_seeds) > 1 else "") + "; the families:"
              + "".join(f"\n- {name}: `{' '.join(o) or '(the default run)'}`" for name, o in budget.families.items()))
    text, passed = checks_report(f"Backbones at equal parameters and equal wall time ({args.budget} budget)", machine,
                                 method, table, checks, time.perf_counter() - start,
                                 reproduce_command("experiments.benchmarks.backbones", argv))
    return finish_report(text, passed, args)


def timing_alone(budget: Budget, args: argparse.Namespace, machine: Machine, start: float,
                 argv: Sequence[str] | None) -> int:
    """``--width-scale`` / ``--precision bf16``: the budget's timing (at widened networks, in bf16), without runs."""
    widened = budget.widened(args.width_scale) if args.width_scale > 1 else budget
    timing = measure_throughput(widened, args.precision)
    table, checks = timing_report(speed_rows(widened, timing), timing.unet_without_onednn, args.precision,
                                  widened.peak_size)
    widths = f" with every family's widths {args.width_scale}x its own" if args.width_scale > 1 else ""
    method = (f"Budget `{args.budget}`{' (--quick)' if args.quick else ''}{widths}, timed alone (nothing trains or "
              f"scores): {widened.rounds} interleaved rounds of {widened.steps_per_round} steps, batch "
              f"{widened.batch_size}, {args.precision}; the families:"
              + "".join(f"\n- {name}: `{' '.join(o)}`" for name, o in widened.families.items()))
    at = f" at {args.width_scale}x width" if args.width_scale > 1 else ""
    text, passed = checks_report(f"Backbones' FLOP/s{at} in {args.precision} ({args.budget} budget)", machine,
                                 method, table, checks, time.perf_counter() - start,
                                 reproduce_command("experiments.benchmarks.backbones", argv))
    return finish_report(text, passed, args)


if __name__ == "__main__":
    sys.exit(main())

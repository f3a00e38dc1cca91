"""The benchmark's markdown table: one row per figure, each with its bar, verdict and the command that
measures it again."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from experiments.benchmarks.speed.memory import CifarMemoryFigures, MemoryFigures
from experiments.benchmarks.speed.sampling import (
    NoiseStreamFigures,
    OverheadFigures,
    ProcessFigures,
    SamplingFigures,
    noise_share_of_step,
)
from experiments.benchmarks.speed.timing import median, paired_ratio
from experiments.benchmarks.speed.training import TrainingFigures
from experiments.lib import Machine, pass_fail

TRAINER_BAR = 0.95  # Trainer steps/s >= 0.95 x the bare loop's
SAMPLER_BAR = 1.1  # Sampler seconds per step <= 1.1 x the bare loop's
MEMORY_GROWTH_LIMIT = 0.05  # RSS after the last epoch within 5 % of RSS after epoch 2
# Each row names what it measures; rows are printed in this order, and a row's topic picks its note below.
TOPICS = ("trainer-overhead", "precision", "compile", "ddim-vs-ddpm", "sampler-overhead", "noise-streams", "flops",
          "memory", "torchrun-sampling")
NOTES = {
    "trainer-overhead": (
        "the Trainer runs its real `train()` one epoch per round (NullLogger, FileManager in a temporary "
        "directory, no progress bar); the timer wraps the epoch's training loop, so validation and checkpoints "
        "are excluded. The bare loop does the same work inline: index the data tensor, q_sample with the method's"
        " coefficients, forward under autocast, MSE, backward, clip, AdamW step, EMA lerp."),
    "precision": (
        "the Trainer with `trainer.precision=fp32`, interleaved with the trainer-overhead runs."),
    "compile": (
        "the Trainer with `compile=True`; its first epoch compiles (twice: the epoch's last batch is smaller), "
        "and a cold inductor cache makes that minutes instead of seconds."),
    "ddim-vs-ddpm": (
        "`Sampler.sample` on the default U-Net (untrained: speed does not depend on the weights), bf16 autocast "
        "as `conf/sampler` inherits it from the trainer."),
    "sampler-overhead": (
        "the network is `0.1 * x_t`, so a step costs only the loop; the inline loop takes the coefficients as "
        "Python floats and draws the same noise the same way (one generator per sample, seeded from (seed, sample"
        " index): `SampleNoise`), and both loops' samples are checked equal before timing."),
    "noise-streams": (
        "one step's noise for the ddim-vs-ddpm batch drawn by `SampleNoise` (a CPU generator per sample, rows "
        "filled one by one) against one `torch.randn` of the batch from one generator, interleaved, 50 draws per "
        "round; the share compares the extra time per draw with one DDPM step of the default U-Net "
        "(ddim-vs-ddpm's seconds per sample x batch / T). Seeding is once per batch per `Sampler.sample`."),
    "torchrun-sampling": (
        "`python -m torch.distributed.run --nproc_per_node=N -m experiments.benchmarks.speed.sampling --worker` "
        "with N = 1 and 2 (gloo, one intra-op thread per process): every rank builds the same seeded U-Net and "
        "sampler, draws one warm-up batch, then rank 0 times one `Sampler.sample` of the whole set (its share of "
        "the batches, then the gather); the two runs' samples are compared bit for bit. On a shared 2-core "
        "machine the second process competes with the other jobs, so the speed-up is well below 2."),
    "flops": (
        "FLOPs of one training step (forward + backward of matmuls, convolutions, attention) from "
        "`torch.utils.flop_counter.FlopCounterMode`, times the measured steps/s, over the FLOP/s of 2048x2048 "
        "matmuls in the same precision measured in the same rounds. On the CPU an fp32 `torch.matmul` runs in MKL "
        "while the model's convolutions (and bf16 matmuls) run in oneDNN, so the fp32 peak is the faster of MKL's "
        "and oneDNN's fp32 GEMM in each round (MKL's alone until 2026-12-07, when the fp32 share could exceed 100%)."
        " The precision named first is the trainer's, `auto` resolved as the Trainer resolves it."),
    "memory": (
        "`python run.py` in a child process; its RSS (`VmRSS`) is read as each epoch's record appears in "
        "`metrics.jsonl`, its peak is its high-water mark `VmHWM`, read every 20 ms until it exits (covers the "
        "final sampling too; `ru_maxrss` would include the benchmark process it was spawned from)."),
}


@dataclass
class Row:
    """One figure: ``name`` says what it measures; ``topic`` (default: the name) picks its note and place."""

    name: str
    measurement: str
    figure: str
    bar: str = "record"
    verdict: str = ""
    reproduce: str = ""
    topic: str = ""

    def __post_init__(self) -> None:
        self.topic = self.topic or self.name

    def markdown(self) -> str:
        cells = [self.name, self.measurement, self.figure, self.bar, self.verdict, f"`{self.reproduce}`"]
        return "| " + " | ".join(cells) + " |"


@dataclass
class Report:
    machine: Machine
    command: str
    load_before: float
    load_after: float = math.nan
    rows: list[Row] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [
            f"## Benchmark ({self.machine.device})",
            "",
            self.machine.markdown(),
            f"- command: `{self.command}`",
            f"- 1-minute load average at start / end: {self.load_before:.1f} / {self.load_after:.1f} (shared "
            "cores: variants run interleaved, one measurement each per round; figures are medians, ratios are "
            "medians of per-round ratios)",
            "",
            "| name | measurement | figure | bar | verdict | reproduce |",
            "|---|---|---|---|---|---|",
            *(row.markdown() for row in sorted(self.rows, key=lambda row: TOPICS.index(row.topic))),
        ]
        verdicts = [f"{row.name}: {row.verdict}" for row in self.rows if row.verdict in ("PASS", "FAIL")]
        if verdicts:
            lines += ["", "Bars: " + "; ".join(verdicts)]
        shown = {row.topic for row in self.rows}
        lines += ["", "How each figure is measured:", ""]
        lines += [f"- {topic}: {note}" for topic, note in NOTES.items() if topic in shown]
        return "\n".join(lines)


def training_rows(f: TrainingFigures, rounds: int, reproduce: str) -> list[Row]:
    """Trainer overhead, precision, compile and FLOP/s from the interleaved training rounds."""
    ratio = paired_ratio(f.trainer, f.bare)
    rows = [
        Row("trainer-overhead",
            f"`Trainer.train()` vs bare PyTorch loop, steps/s ({f.precision}, batch {f.batch_size}, "
            f"{rounds} rounds of one epoch)",
            f"{ratio:.3f}x ({median(f.trainer):.2f} vs {median(f.bare):.2f} steps/s)",
            f">= {TRAINER_BAR}", pass_fail(ratio >= TRAINER_BAR), reproduce),
        Row("precision", f"{f.precision} vs fp32 steps/s (Trainer)",
            f"{paired_ratio(f.trainer, f.trainer_fp32):.2f}x ({median(f.trainer):.2f} vs "
            f"{median(f.trainer_fp32):.2f} steps/s)", reproduce=reproduce),
        _compile_row(f, reproduce),
        _flops_row(f, reproduce),
    ]
    return rows


def _compile_row(f: TrainingFigures, reproduce: str) -> Row:
    measurement = f"`trainer.compile=true` vs eager steps/s ({f.precision}, after warm-up)"
    if f.compiled is None:
        return Row("compile", measurement, "skipped (--quick: compiling takes minutes)", reproduce=reproduce)
    return Row("compile", measurement,
               f"{paired_ratio(f.compiled, f.trainer):.2f}x ({median(f.compiled):.2f} vs {median(f.trainer):.2f} "
               f"steps/s); compile time {f.compile_seconds:.0f} s (first epoch beyond a steady one; "
               f"{f.compile_cache})",
               reproduce=reproduce)


def _flops_row(f: TrainingFigures, reproduce: str) -> Row:
    step_flops = f.flops_per_sample * f.samples_per_step

    def achieved(steps: list[float], peak: list[float]) -> str:
        flops = [step_flops * s for s in steps]
        return (f"{median(flops) / 1e9:.1f} of {median(peak) / 1e9:.0f} GFLOP/s "
                f"({paired_ratio(flops, peak):.1%})")

    main_peak = f.peak_bf16 if f.precision == "bf16" else f.peak_fp32
    return Row("flops", "model FLOP/s in training (FlopCounterMode, forward + backward) / square-matmul peak",
               f"{f.precision}: {achieved(f.trainer, main_peak)}; fp32: {achieved(f.trainer_fp32, f.peak_fp32)}; "
               f"{f.flops_per_sample * f.batch_size / 1e9:.2f} GFLOP per batch-{f.batch_size} step",
               reproduce=reproduce)


def sampling_rows(per_sample: SamplingFigures, overhead: list[OverheadFigures], noise: NoiseStreamFigures,
                  reproduce: str) -> list[Row]:
    """DDIM against DDPM per sample, the Sampler's overhead per sampling method, and the per-sample noise
    streams' cost."""
    p = per_sample
    rows = [Row(
        "ddim-vs-ddpm",
        f"DDIM-{p.ddim_steps} vs DDPM-{p.ddpm_steps}, seconds per sample (`Sampler.sample`, default U-Net, "
        f"one batch of {p.num_samples})",
        f"{paired_ratio(p.ddpm, p.ddim):.1f}x faster ({median(p.ddim) * 1e3:.2f} vs {median(p.ddpm) * 1e3:.1f} "
        "ms/sample)", reproduce=reproduce,
    )]
    for o in overhead:
        ratio = paired_ratio(o.sampler, o.bare)
        rows.append(Row(
            f"sampler-overhead-{o.method}",
            f"`Sampler` vs inline loop of the same update, per step, trivial network, "
            f"{o.method.upper()}-{o.steps} (batch {o.num_samples})",
            f"{ratio:.2f}x ({median(o.sampler) * 1e6:.0f} vs {median(o.bare) * 1e6:.0f} us/step; samples "
            f"agree to {o.max_difference:.0e})",
            f"<= {SAMPLER_BAR}", pass_fail(ratio <= SAMPLER_BAR), reproduce, topic="sampler-overhead",
        ))
    shape = "x".join(map(str, noise.sample_shape))
    rows.append(Row(
        "noise-streams",
        f"one noise generator per sample (`SampleNoise`) vs one per batch: one step's noise, "
        f"batch {noise.num_samples} of {shape}",
        f"{paired_ratio(noise.per_sample, noise.one_generator):.1f}x ({median(noise.per_sample) * 1e6:.0f} vs "
        f"{median(noise.one_generator) * 1e6:.0f} us/draw; seeding the batch's generators "
        f"{noise.setup * 1e3:.1f} ms); {noise_share_of_step(noise, per_sample):.1%} of a DDPM step of the default "
        "U-Net (ddim-vs-ddpm)", "record", reproduce=reproduce,
    ))
    return rows


def process_rows(p: ProcessFigures, reproduce: str) -> list[Row]:
    """Sampling throughput of 2 torchrun processes against 1."""
    one, two = p.rates[1], p.rates[2]
    return [Row(
        "torchrun-sampling",
        f"sampling throughput, 2 torchrun processes vs 1 (gloo, CPU, {p.threads} thread each; DDIM-{p.steps}, "
        f"default U-Net, {p.num_samples} samples in batches of {p.batch_size}, gather on rank 0 included)",
        f"{two / one:.2f}x ({two:.0f} vs {one:.0f} samples/s); samples.npz identical: "
        f"{'yes' if p.identical else 'NO'}", "record", "" if p.identical else "DIFFERS", reproduce,
    )]


def memory_rows(m: MemoryFigures) -> list[Row]:
    """The default run's peak RSS and its RSS after epoch 2 against after the last epoch."""
    last = len(m.rss_after_epoch_mib)
    flat = abs(m.growth) <= MEMORY_GROWTH_LIMIT
    return [Row(
        "memory", "peak resident memory of the default run; RSS after epoch 2 vs after the last epoch",
        f"{m.peak_mib:.0f} MiB peak; {m.rss_after_epoch_mib[1]:.0f} -> {m.rss_after_epoch_mib[-1]:.0f} MiB after "
        f"epochs 2 -> {last} ({m.growth:+.1%}); run took {m.seconds:.0f} s",
        f"growth within {MEMORY_GROWTH_LIMIT:.0%}", "flat" if flat else "GROWS", m.command,
    )]


def cifar_memory_rows(m: CifarMemoryFigures) -> list[Row]:
    """What a CIFAR-10-sized image set adds to a run's peak RSS, against its uint8 and float32 sizes."""
    return [Row(
        "memory-cifar10",
        f"peak resident memory with a CIFAR-10-sized synthetic set ({m.images:,} uint8 3x32x32 images, "
        "converted per batch; small U-Net, a few steps) against the same run on "
        f"{6 * m.baseline_images:,} images",
        f"{m.peak_mib:.0f} vs {m.baseline_peak_mib:.0f} MiB peak: the {m.extra_images:,} more images add "
        f"{m.data_mib:.0f} MiB (their uint8 size {m.uint8_mib:.0f} MiB; float32 would be {4 * m.uint8_mib:.0f} MiB)",
        "record", reproduce=m.command, topic="memory",
    )]

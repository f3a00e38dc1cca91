"""GPU check of the CIFAR-10-sized DDPM U-Net (training steps/s in fp32, bf16 and bf16 + torch.compile, model
FLOP/s as a share of the device's bf16 peak, peak memory, DDIM-50 sampling throughput) and of DiT-B/2 at the
256x256 / 8 latent shape (training in bf16 and bf16 + compile: steps/s, MFU, peak memory); under 10 minutes.

    python -m experiments.tools.gpu_check --out experiments/tools/gpu_check_h200.md
    python -m experiments.tools.gpu_check --peak-tflops 312          # a GPU not in PEAK_BF16_TFLOPS
    python -m experiments.tools.gpu_check --quick --device cpu       # toy model on the CPU: proves the script works

The model is ``experiment=ddpm_cifar10``'s network, ``model=ddpm_unet`` (Ho et al.'s CIFAR-10 U-Net: 128 base
channels, multipliers (1, 2, 2, 2), 2 residual blocks per level, self-attention at 16x16, dropout 0.1: 35.7M
parameters), batch 128 (the paper's), on synthetic 3x32x32 data in [-1, 1] (``data=synthetic``; speed does
not depend on the pixels). DiT-B/2 (Peebles & Xie 2023, ``model=dit model.size=B model.patch_size=2``: 130M
parameters, 1,000 classes) trains at batch 256 (the paper's) on synthetic 4x32x32 latents; the goal is an MFU of
at least 40% on an H100. fp32 keeps torch's defaults: cuDNN convolutions may use TF32, matmuls do not. Each
training step is the project's loss (``method.compute_loss``: epsilon MSE at uniform t), backward and AdamW.
FLOPs are counted once by ``torch.utils.flop_counter`` (matmuls, convolutions, attention; forward and backward;
through :func:`diffusion.tasks.summary.flop_counter`, so attention's backward is its four gradient matmuls, not the
fused kernels' recomputed scores: model FLOPs, as MFU counts them) and divided by the measured seconds per step.
SiT-B/2 (the same DiT-B/2 trained by flow matching, ``method=flow_matching``: Ma et al. 2024) is timed in bf16
without and with REPA (Yu et al. 2025: lambda 0.5, block 4 of 12 (a third, the default), projector 2048 wide) in
two forms: with the encoder's features stored beside the latents (DINOv2-B's 768 x 16 x 16 patch features per
image, synthetic here: REPA adds only the projector and the loss) and with a DINOv2-B forward on 3x256x256 images
resized to 224 every step (random weights of DINOv2-B's shape: the same cost); the REPA overhead is the plain
run's steps/s over each. ``--quick`` uses 8 channels (a one-block DiT of width 32, a one-layer DINOv2 of width 16),
batch 4, 3 steps and torch.compile's ``eager`` backend (tracing without code generation): its figures mean nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from diffusion.evaluation.patch_features import DINOV2_INPUT_SIZE, Dinov2PatchFeatures
from diffusion.runtime.devices import Precision, autocast
from diffusion.training.repa import RepresentationAlignment
from experiments.benchmarks.speed.sampling import make_sampler
from experiments.benchmarks.speed.timing import synchronize
from experiments.benchmarks.speed.training import build_parts, compose_config, step_flops_per_sample
from experiments.lib import add_common_flags, describe_machine, markdown_table, reproduce_command, set_threads, \
    write_results

# Dense bf16 tensor-core peak (no sparsity), TFLOP/s, from the vendors' data sheets; the first name contained in
# torch.cuda.get_device_name() wins, so the more specific names come first.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("RTX 4090", 165.0),
)
CIFAR_UNET = ("model=ddpm_unet",)  # its defaults are the paper's network
QUICK_UNET = ("model.base_channels=8", "model.channel_mults=[1,2]", "model.num_res_blocks=1",
              "model.attention_resolutions=[16]", "model.num_groups=4", "model.num_heads=1")
CIFAR_SHAPE = (3, 32, 32)
DIT_B2 = ("model=dit", "model.size=B", "model.patch_size=2", "data.num_classes=1000")
QUICK_DIT = ("model=dit", "model.depth=1", "model.hidden_size=32", "model.num_heads=2", "model.patch_size=2",
             "data.num_classes=10")
LATENT_SHAPE = (4, 32, 32)  # 256x256 images through a /8 autoencoder
IMAGE_SHAPE = (3, 256, 256)  # the images behind those latents, what REPA's encoder sees
DINOV2_B = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}
QUICK_DINOV2 = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}


@dataclass(frozen=True)
class Settings:
    model: tuple[str, ...]
    shape: tuple[int, ...]  # one synthetic sample
    batch_size: int  # training and sampling batch
    steps: int  # timed training steps per variant (after warmup)
    warmup: int
    sample_batches: int  # DDIM-50 batches timed (after one warm-up batch)
    ddim_steps: int
    compile_backend: str
    method: str = "ddim"
    encoder: dict[str, int] | None = None  # REPA's encoder (a Dinov2Config's sizes): the SiT check only
    projector_dim: int = 2048


FULL = Settings(CIFAR_UNET, CIFAR_SHAPE, batch_size=128, steps=300, warmup=20, sample_batches=4, ddim_steps=50,
                compile_backend="inductor")
QUICK = Settings(QUICK_UNET, CIFAR_SHAPE, batch_size=4, steps=3, warmup=1, sample_batches=1, ddim_steps=3,
                 compile_backend="eager")
FULL_DIT = Settings(DIT_B2, LATENT_SHAPE, batch_size=256, steps=100, warmup=10, sample_batches=0, ddim_steps=0,
                    compile_backend="inductor")
QUICK_DIT = Settings(QUICK_DIT, LATENT_SHAPE, batch_size=4, steps=3, warmup=1, sample_batches=0, ddim_steps=0,
                     compile_backend="eager")
FULL_SIT = Settings(DIT_B2, LATENT_SHAPE, batch_size=256, steps=100, warmup=10, sample_batches=0, ddim_steps=0,
                    compile_backend="inductor", method="flow_matching", encoder=DINOV2_B)
QUICK_SIT = Settings(QUICK_DIT.model, LATENT_SHAPE, batch_size=4, steps=3, warmup=1, sample_batches=0, ddim_steps=0,
                     compile_backend="eager", method="flow_matching", encoder=QUICK_DINOV2, projector_dim=16)
RepaForm = Literal["stored features", "DINOv2-B forward"]


@dataclass
class TrainingRow:
    variant: str
    steps_per_second: float
    flops_per_step: float
    parameters: int
    peak_memory: int | None  # bytes (CUDA), None on the CPU
    warmup_seconds: float  # compilation included


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_flags(parser, out_help="also write the results table to this markdown file")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, TFLOP/s (default: from "
                        "the table of known GPUs; none for a CPU)")
    parser.add_argument("--steps", type=int, help="timed training steps per variant (default: 300; --quick: 3)")
    parser.add_argument("--no-compile", action="store_true", help="skip the bf16 + torch.compile variant")
    parser.add_argument("--no-dit", action="store_true", help="skip the DiT-B/2 check")
    parser.add_argument("--no-repa", action="store_true", help="skip the SiT-B/2 + REPA check")
    return parser.parse_args(argv)


def config(settings: Settings) -> Any:
    shape = ",".join(str(size) for size in settings.shape)
    overrides = ["data=synthetic", f"data.shape=[{shape}]", *settings.model, f"method={settings.method}",
                 "method.num_timesteps=1000"]
    return compose_config(overrides)


def measure_training(cfg: Any, variant: str, precision: Precision, compile_backend: str | None, settings: Settings,
                     device: torch.device, repa: RepaForm | None = None) -> TrainingRow:
    """Seconds per step of ``settings.steps`` steps (loss, backward, AdamW) after ``settings.warmup`` ones; the
    FLOPs are the network's (the method's loss without REPA)."""
    parts = build_parts(cfg)
    model, method = parts.model.to(device).train(), parts.method.to(device)
    generator = torch.Generator().manual_seed(0)
    x0 = (torch.rand((settings.batch_size, *settings.shape), generator=generator) * 2 - 1).to(device)  # (B, C, H, W)
    flops = step_flops_per_sample(model, method, x0, device, precision) * settings.batch_size
    network = torch.compile(model, backend=compile_backend) if compile_backend else model
    loss_of, projector = training_loss(method, model, x0, settings, device, repa)
    optimizer = torch.optim.AdamW([*model.parameters(), *projector], lr=2e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            loss = loss_of(network)
        loss.backward()
        optimizer.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(settings.warmup):
        step()
    synchronize(device)
    warmup = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(settings.steps):
        step()
    synchronize(device)
    seconds = (time.perf_counter() - start) / settings.steps
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    parameters = sum(p.numel() for p in model.parameters())
    return TrainingRow(variant, 1 / seconds, flops, parameters, peak, warmup)


def training_loss(method: Any, model: torch.nn.Module, x0: torch.Tensor, settings: Settings, device: torch.device,
                  repa: RepaForm | None) -> tuple[Callable[[torch.nn.Module], torch.Tensor], list[torch.nn.Parameter]]:
    """The step's loss of the network, and the projector's parameters: the method's loss alone, or with REPA on
    synthetic stored features ``(B, 768, 16, 16)`` or on a DINOv2 forward of synthetic images each step."""
    if repa is None:
        return (lambda network: method.compute_loss(network, x0)), []
    from transformers import Dinov2Config, Dinov2Model

    assert settings.encoder is not None, "the REPA check needs settings.encoder"
    encoder = Dinov2PatchFeatures(Dinov2Model(Dinov2Config(**settings.encoder))).to(device)
    aligned = RepresentationAlignment(method, model, encoder, IMAGE_SHAPE, weight=0.5,
                                      projector_dim=settings.projector_dim, resize=True).to(device)
    generator = torch.Generator().manual_seed(1)
    batch, side = len(x0), DINOV2_INPUT_SIZE // int(encoder.network.config.patch_size)
    if repa == "stored features":
        features = torch.randn((batch, encoder.dim, side, side), generator=generator).to(device)  # (B, D, 16, 16)
        return (lambda network: aligned.compute_loss(network, x0, encoder_features=features)), \
            list(aligned.trainable.parameters())
    images = (torch.rand((batch, *IMAGE_SHAPE), generator=generator) * 2 - 1).to(device)  # (B, 3, 256, 256)
    return (lambda network: aligned.compute_loss(network, x0, encoder_features=aligned.encode(images))), \
        list(aligned.trainable.parameters())


def measure_sampling(cfg: Any, settings: Settings, device: torch.device, precision: Precision) -> float:
    """DDIM images per second: ``settings.sample_batches`` batches of ``settings.batch_size`` (one warm-up batch
    first), through the Sampler."""
    parts = build_parts(cfg)
    count = settings.batch_size * settings.sample_batches
    sampler = make_sampler(cfg, parts.model, parts.method, settings.shape, count, settings.ddim_steps, device,
                           batch_size=settings.batch_size)
    sampler.precision = precision
    sampler.sample(num_samples=settings.batch_size)
    synchronize(device)
    start = time.perf_counter()
    sampler.sample()
    synchronize(device)
    return count / (time.perf_counter() - start)


def peak_tflops(device: torch.device, given: float | None) -> tuple[float | None, str]:
    """The bf16 peak and where it comes from."""
    if given is not None:
        return given, "--peak-tflops"
    if device.type != "cuda":
        return None, "no table entry for a CPU (pass --peak-tflops)"
    name = torch.cuda.get_device_name(device)
    for known, tflops in PEAK_BF16_TFLOPS:
        if known in name:
            return tflops, f"data-sheet dense bf16 peak of {known}"
    return None, f"{name!r} is not in PEAK_BF16_TFLOPS (pass --peak-tflops)"


def report(sections: list[tuple[Settings, list[TrainingRow]]], sampling: dict[str, float], settings: Settings,
           device: torch.device, peak: tuple[float | None, str], seconds: float, quick: bool) -> str:
    """The machine, then one training table per network checked (the U-Net's followed by its sampling table)."""
    title = "# GPU check: CIFAR-10 DDPM U-Net, DiT-B/2 and SiT-B/2 + REPA" + (
        " (--quick: toy models, figures mean nothing)" if quick else "")
    lines = [title, "", describe_machine(device).markdown(), ""]
    for index, (checked, rows) in enumerate(sections):
        lines += training_section(checked, rows, peak)
        if checked.encoder is not None:
            lines += repa_overhead(rows)
        if index == 0:
            lines += [*markdown_table(["sampling", "images/s"],
                                      [[f"DDIM-{settings.ddim_steps}, {name}, batch {settings.batch_size}",
                                        f"{rate:.1f}"] for name, rate in sampling.items()]), ""]
    lines += [f"Wall time {seconds / 60:.1f} min. Reproduce: `{reproduce_command('experiments.tools.gpu_check')}`",
              ""]
    return "\n".join(lines)


def training_section(settings: Settings, rows: list[TrainingRow], peak: tuple[float | None, str]) -> list[str]:
    """What was trained, and its table: steps/s, images/s, model TFLOP/s, share of the bf16 peak (MFU), memory."""
    tflops, source = peak
    shape = "x".join(str(size) for size in settings.shape)
    model_line = (
        f"Model: `{' '.join(settings.model)} method={settings.method}` "
        f"{rows[0].parameters / 1e6:.2f}M parameters; synthetic {shape} data, batch {settings.batch_size}, "
        f"{settings.steps} timed steps per variant after {settings.warmup} warm-up steps. bf16 peak: "
        f"{'n/a' if tflops is None else f'{tflops:g} TFLOP/s'} ({source})."
    )
    table = []
    for row in rows:
        achieved = row.flops_per_step * row.steps_per_second / 1e12
        share = "n/a" if tflops is None else f"{achieved / tflops:.1%}"
        memory = "n/a" if row.peak_memory is None else f"{row.peak_memory / 2**30:.2f} GiB"
        table.append([row.variant, f"{row.steps_per_second:.2f}", f"{row.steps_per_second * settings.batch_size:.0f}",
                      f"{achieved:.3g}", share, memory, f"{row.warmup_seconds:.1f} s"])
    return [model_line, "", *markdown_table(["training variant", "steps/s", "images/s", "model TFLOP/s",
                                             "share of bf16 peak", "peak memory", "warm-up (compile)"], table), ""]


def repa_overhead(rows: list[TrainingRow]) -> list[str]:
    """The plain row's steps/s over each REPA row's: what REPA costs per step."""
    plain = rows[0].steps_per_second
    ratios = [f"{row.variant.split(', ', 1)[1]} {plain / row.steps_per_second:.3f}x" for row in rows[1:]]
    return [f"REPA overhead (plain steps/s over REPA steps/s, SiT-B/2 in bf16): {'; '.join(ratios)}.", ""]


def train_variants(settings: Settings, variants: list[tuple[Any, ...]], device: torch.device,
                   start: float) -> list[TrainingRow]:
    """One :class:`TrainingRow` per (name, precision, compile backend[, REPA form])."""
    cfg = config(settings)
    rows = []
    for name, precision, backend, *repa in variants:
        print(f"[gpu_check {time.perf_counter() - start:5.0f} s] training {settings.model[0]} ({settings.method}): "
              f"{name}", file=sys.stderr, flush=True)
        rows.append(measure_training(cfg, name, precision, backend, settings, device, *repa))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    start = time.perf_counter()
    settings, dit, sit = (QUICK, QUICK_DIT, QUICK_SIT) if args.quick else (FULL, FULL_DIT, FULL_SIT)
    if args.steps is not None:
        settings, dit, sit = (Settings(**{**s.__dict__, "steps": args.steps}) for s in (settings, dit, sit))
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no GPU; use --device cpu (with --quick)", file=sys.stderr)
        return 2
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    compiled = [] if args.no_compile else [(f"bf16 + torch.compile ({settings.compile_backend})", "bf16",
                                            settings.compile_backend)]
    sections = [(settings, train_variants(settings, [("fp32", "fp32", None), ("bf16", "bf16", None), *compiled],
                                          device, start))]
    sampling = {}
    for precision in ("bf16", "fp32"):
        print(f"[gpu_check {time.perf_counter() - start:5.0f} s] sampling: DDIM {precision}", file=sys.stderr,
              flush=True)
        sampling[precision] = measure_sampling(config(settings), settings, device, precision)
    if not args.no_dit:
        sections.append((dit, train_variants(dit, [("bf16", "bf16", None), *compiled], device, start)))
    if not args.no_repa:
        sections.append((sit, train_variants(sit, [("bf16", "bf16", None)] + [
            (f"bf16 + REPA, {form}", "bf16", None, form) for form in ("stored features", "DINOv2-B forward")],
            device, start)))
    text = report(sections, sampling, settings, device, peak_tflops(device, args.peak_tflops),
                  time.perf_counter() - start, args.quick)
    print(text)
    if args.out is not None:
        write_results(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

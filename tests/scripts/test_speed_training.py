"""The speed benchmark's bare loop trains in the precision the Trainer resolves (``auto``: bf16 where the hardware
has it, else fp32), so the trainer-overhead figure compares the same arithmetic."""

from __future__ import annotations

import torch

from diffusion.runtime.devices import resolve_precision
from experiments.benchmarks.speed.training import BareLoop, compose_config


def test_the_bare_loop_resolves_auto_precision_as_the_trainer_does():
    cpu = torch.device("cpu")
    cfg = compose_config(["trainer.precision=auto", "model.base_channels=8", "model.num_res_blocks=1"])
    loop = BareLoop(cfg, cpu)
    assert loop.precision == resolve_precision("auto", cpu, "trainer.precision") != "auto"
    assert loop.epoch() > 0  # one epoch trains under that autocast (auto taken as fp16 once ran at 1/20 the speed)

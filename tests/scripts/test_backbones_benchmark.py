"""The backbone benchmark's --reuse: a finished run is reused only when today's command composes its configuration;
another run trains beside the earlier one, which is kept. --train-seeds: one run per seed, the FD their mean. The fp32
peak the FLOP/s shares divide by is the faster of the CPU's two GEMM libraries (MKL, oneDNN). --width-scale: every
family widened alike, timed alone."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from experiments.benchmarks.backbones import DEFAULT, MNIST, QUICK, Row, flop_check, main, report, reusable_steps, \
    seed_list, seeded_run, timing_report
from experiments.benchmarks.speed import timing
from experiments.benchmarks.speed.training import build_parts, compose_config, compose_run_config
from experiments.lib import set_aside


def stored_run(run_dir: Path, overrides: list[str], steps: int) -> Path:
    """A run folder as run.py leaves it: the resolved config (with the data's shape filled in) and a score."""
    config = OmegaConf.to_container(compose_run_config(overrides), resolve=True)
    config["trainer"]["max_steps"], config["num_threads"] = steps, 1
    config["model"].update(in_channels=1, image_size=28)
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / "eval.json").write_text("{}")
    return run_dir


def test_reuse_needs_the_same_configuration_but_not_the_same_length(tmp_path: Path):
    uvit = [*MNIST.families["U-ViT"], *MNIST.shared]
    run = stored_run(tmp_path / "uvit", uvit, steps=2189)
    assert reusable_steps(run, uvit) == 2189  # another length and thread count, data-filled keys: still this run
    assert reusable_steps(run, [*uvit, "model.depth=9"]) is None
    assert reusable_steps(run, [*uvit, "trainer.lr=3e-3"]) is None
    assert reusable_steps(run, [*uvit, "evaluator.seeds=[0]"]) is None
    (run / "eval.json").unlink()
    assert reusable_steps(run, uvit) is None  # never scored


def test_a_family_that_trains_again_keeps_its_earlier_run_beside(tmp_path: Path):
    run = tmp_path / "uvit"
    for n in (1, 2):  # the second replacement finds the first one's name taken
        run.mkdir()
        (run / "eval.json").write_text(f'{{"run": {n}}}')
        run.with_suffix(".log").write_text(f"log {n}")
        set_aside(run)
        assert not run.exists() and not run.with_suffix(".log").exists()
        assert (tmp_path / f"uvit_before_{n}" / "eval.json").read_text() == f'{{"run": {n}}}'
        assert (tmp_path / f"uvit_before_{n}.log").read_text() == f"log {n}"
    set_aside(run)  # nothing there: nothing to move
    assert sorted(p.name for p in tmp_path.iterdir()) == ["uvit_before_1", "uvit_before_1.log", "uvit_before_2",
                                                          "uvit_before_2.log"]
    (tmp_path / "uvit_before_3.log").write_text("a stray log")  # a name taken by a log alone is taken too
    run.mkdir()
    run.with_suffix(".log").write_text("log 4")
    set_aside(run)
    assert (tmp_path / "uvit_before_3.log").read_text() == "a stray log"
    assert (tmp_path / "uvit_before_4.log").read_text() == "log 4" and (tmp_path / "uvit_before_4").is_dir()


def test_each_training_seed_is_its_own_run_and_reused_only_as_that_seed(tmp_path: Path):
    dit = [*MNIST.families["DiT"], *MNIST.shared]
    assert seeded_run(tmp_path, "EDM2 U-Net", 0) == (tmp_path / "edm2_unet", ())  # where single-seed runs were
    run_dir, seeded = seeded_run(tmp_path, "DiT", 2)
    assert (run_dir, seeded) == (tmp_path / "dit_seed2", ("seed=2",))
    run = stored_run(run_dir, [*MNIST.families["DiT"], *seeded, *MNIST.shared], steps=2828)
    assert reusable_steps(run, [*MNIST.families["DiT"], *seeded, *MNIST.shared]) == 2828
    assert reusable_steps(run, dit) is None  # trained with seed 2: not the seed-0 run
    assert seed_list("0, 1,2") == (0, 1, 2)
    for bad in ("0,0", "1,-1", "a"):
        with pytest.raises(argparse.ArgumentTypeError):
            seed_list(bad)


def test_with_several_training_seeds_the_bar_compares_their_means():
    def row(family: str, fds: list[float]) -> Row:
        gemm = (None, None) if family == "U-Net" else (0.6, 0.85)
        rounds = {"U-Net": [1.0] * 3, "DiT": [0.9, 1.0, 1.1], "U-ViT": [1.2, 1.3, 0.9]}[family]
        return Row(family, 500_000, "900", 1.0, 100.0, 0.5, rounds, *gemm, fds, [0.2] * len(fds), 2.9, 0.0)

    rows = [row("U-Net", [4.0, 5.0, 6.0]), row("DiT", [5.0, 7.0, 9.0]), row("U-ViT", [6.0, 11.0, 10.0])]
    table, checks = report(rows, 0.375)
    assert "| 50.0% | — |" in table[2] and "| 50.0% | 60% / 85% |" in table[3]  # the MLP matmul: MKL / oneDNN
    assert "with oneDNN off" in table[-1] and "reaches 37.5% of the peak against 50.0%" in table[-1]
    assert "FD per training seed" in table[0] and "over 3 training seeds" in table[0]
    assert "| 5 ± 0.2 / 7 ± 0.2 / 9 ± 0.2 | 7 ± 2 | 1.40x |" in table[3]  # the DiT: mean 7, std 2 over the seeds
    assert [passed for passed, _ in checks[::2]] == [True, False]  # 7 <= 1.5 x 5; 9 > 7.5, though 6 alone would pass
    flops = checks[1::2]  # the FLOP/s bar: the median of the paired rounds' ratios at least 1
    assert [passed for passed, _ in flops] == [True, True] and "1.00x, 0.90-1.10x over 3 rounds; a tie" in flops[0][1]
    assert "1.20x, 0.90-1.30x over 3 rounds; a tie" in flops[1][1]
    below = Row("DiT", 500_000, "900", 3.0, 300.0, 0.4, [0.6, 0.7, 0.8], 0.6, 0.85, [5.0], [0.2], 2.9, 0.0)
    passed, text = flop_check(below, rows[0])
    assert not passed and text.endswith("0.70x, 0.60-0.80x over 3 rounds")  # every round below: no tie
    single, checks = report([row("U-Net", [4.0]), row("DiT", [7.0])], 0.375)
    assert "FD (mean ± std of 3 sets)" in single[0] and "| 7 ± 0.2 | 1.75x |" in single[3] and not checks[0][0]


def test_the_cpu_fp32_peak_is_the_faster_gemm_library(monkeypatch):
    torch.set_num_threads(1)
    assert (timing.onednn_gemm_flops_per_second((64, 32, 48)) > 0) == torch.backends.mkldnn.is_available()
    monkeypatch.setattr(timing, "gemm_flops_per_second", lambda shape, dtype, device, repeats: 1.0)  # MKL's
    monkeypatch.setattr(timing, "onednn_gemm_flops_per_second", lambda shape, repeats: 2.0)
    cpu = torch.device("cpu")
    assert timing.matmul_flops_per_second(64, torch.float32, cpu) == 2.0
    assert timing.matmul_flops_per_second(64, torch.bfloat16, cpu) == 1.0  # a bf16 a @ b runs in oneDNN already
    monkeypatch.setattr(timing, "onednn_gemm_flops_per_second", lambda shape, repeats: 0.0)  # no oneDNN here
    assert timing.matmul_flops_per_second(64, torch.float32, cpu) == 1.0


def test_width_scale_widens_every_family_alike_and_reports_the_timing_alone(capsys):
    widened = MNIST.widened(2)
    assert widened.families["U-Net"] == ("experiment=mnist", "model.base_channels=48")
    for name, overrides in widened.families.items():  # each width key once: the budget's own replaced
        keys = [o.split("=")[0] for o in overrides]
        assert len(keys) == len(set(keys)) and set(keys) >= set(MNIST.widths[name]), name
    assert widened.families["EDM2 U-Net"][-2:] == ("model.model_channels=32", "model.channels_per_head=32")
    assert widened.families["U-ViT"][-1] == "model.hidden_size=176"
    params = {name: sum(p.numel() for p in build_parts(compose_config([*overrides, "trainer.precision=fp32"])).model
                        .parameters()) for name, overrides in widened.families.items()}
    assert all(1.9e6 < count < 2.1e6 for count in params.values()), params  # each about 4x the budget's 0.5M
    rows = [Row(family, 2_000_000, "", speed, 100.0 * speed, share, rounds, *gemm, [], [], None, 0.0)
            for family, speed, share, rounds, gemm in (("U-Net", 1.0, 0.7, [1.0, 1.0, 1.0], (None, None)),
                                                       ("DiT", 3.0, 0.6, [0.8, 0.9, 0.85], (0.7, 0.8)))]
    table, checks = timing_report(rows, 0.4)
    assert "FD" not in table[0] and "| DiT | 2.000M | 3.00x | 300 | 60.0% | 70% / 80% | 0.85x (0.80-0.90x) |" in table
    assert "reaches 40.0% of the peak against 70.0%" in table[-1]
    assert [passed for passed, _ in checks] == [False] and checks[0][1].endswith("0.85x, 0.80-0.90x over 3 rounds")
    with pytest.raises(ValueError, match="width keys"):
        DEFAULT.widened(2)
    for argv, message in ((["--budget", "default", "--width-scale", "2"], "the default budget names no width keys"),
                          (["--width-scale", "0"], "must be a whole number >= 1, got '0'")):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_width_scale_times_the_widened_families_and_writes_their_report(tmp_path: Path, capsys):
    out = tmp_path / "wide.md"
    main(["--quick", "--width-scale", "2", "--threads", "1", "--out", str(out)])  # toy sizes: seconds
    text = out.read_text()
    assert text.strip() in capsys.readouterr().out
    assert text.startswith("# Backbones' FLOP/s at 2x width in fp32 (mnist budget)") and "(--quick) with every" in text
    assert "nothing trains or scores" in text
    assert "- U-Net: `model.num_res_blocks=1 model.base_channels=16`" in text  # the quick U-Net's 8 channels, twice
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| ") and "%" in line]
    assert [row[0] for row in rows] == ["| U-Net", "| DiT", "| U-ViT", "| EDM2 U-Net"]
    assert rows[0][-1] == "1.00x (1.00-1.00x) |"  # the U-Net: the reference of the paired rounds
    assert text.count("training FLOP/s share of the peak no lower than the U-Net's") == 3  # the FLOP/s checks alone
    assert "FD" not in text and not (tmp_path / "runs").exists()
    assert QUICK.widened(2).families["EDM2 U-Net"][-2:] == ("model.model_channels=16", "model.channels_per_head=16")


def test_bf16_times_every_family_under_autocast_against_the_bf16_peak(tmp_path: Path, capsys):
    out = tmp_path / "bf16.md"
    main(["--quick", "--precision", "bf16", "--threads", "1", "--out", str(out)])  # toy sizes: seconds
    text = out.read_text()
    assert text.startswith("# Backbones' FLOP/s in bf16 (mnist budget)") and "batch 64, bf16;" in text
    assert "FLOP/s share of bf16 peak" in text and "256^3 bf16 matmul" in text  # --quick's peak: a small matmul
    assert "Control:" not in text and "nothing trains or scores" in text  # the oneDNN control is fp32's
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| ") and "%" in line]
    assert [row[0] for row in rows] == ["| U-Net", "| DiT", "| U-ViT", "| EDM2 U-Net"]
    assert all(row[5] == "—" for row in rows)  # no fp32 MLP matmul column in bf16
    assert text.count("training FLOP/s share of the peak no lower than the U-Net's") == 3
    assert "FD" not in text and not (tmp_path / "runs").exists()

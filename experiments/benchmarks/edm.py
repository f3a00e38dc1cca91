"""On digits: EDM against DDPM, sigma-space samplers on a DDPM checkpoint, post-hoc EMA, autoguidance.

Trains three default-length digits runs (``python run.py`` with each change) and scores each checkpoint with
``task=evaluate`` / ``task=posthoc_ema``, as a user would:

    DDPM        the default run (also keeps checkpoints/epoch_0010.pt, the autoguidance guide)
    EDM         the same network, epochs and trainer with method=edm: the same steps at the same cost per step,
                so the same wall-clock budget up to noise (both times are reported)
    post-hoc    the default run with trainer.ema=posthoc (snapshots every 50 steps), swept over EMA lengths;
                its tracked EMA and every reconstruction are scored with DDIM-50 (the comparison is between EMA
                lengths, so one fixed sampler serves, and six DDPM-1000 scorings would triple the benchmark)

The targets: EDM with Heun-18 (35 NFE) reaches FD no worse than 1.1x the DDPM run's DDPM-1000 FD; the DDPM
checkpoint sampled with Heun-18 is within 1.25x of its DDPM-1000 FD. Reported beside them: FD against NFE for EDM
(Heun, DPM++(2M) Karras) and the DDPM checkpoint (DDIM, DPM-Solver++, Heun), the best reconstructed EMA std against
the trained EMA, and autoguidance (guide: the DDPM run's epoch-10 checkpoint) against none at each w.

    python -m experiments.benchmarks.edm --threads 1 --out experiments/benchmarks/edm_cpu.md
    python -m experiments.benchmarks.edm --quick --out /tmp/edm.md    # toy runs, seconds each: proves it works

Runs go under ``outputs/benchmarks/`` (git-ignored) unless ``--work-dir`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from experiments.lib import QUICK_RUN, SamplerRow, add_common_flags, add_work_flags, checks_report, describe_machine, \
    evaluate_checkpoint, figure_path, finish_report, fmt, fmt_score, markdown_table, read_eval, reproduce_command, \
    run_into, sampler_rows, set_threads, shown_command, train_into, work_dir

REUSE = False  # --reuse
HEUN_BAR = 1.10  # EDM Heun-18 FD at most this multiple of the DDPM run's DDPM-1000 FD
DDPM_HEUN_BAR = 1.25  # the DDPM checkpoint's Heun-18 FD at most this multiple of its DDPM-1000 FD


@dataclass(frozen=True)
class Settings:
    train: tuple[str, ...]  # what every run shares
    heun_steps: tuple[int, ...]
    ddim_steps: tuple[int, ...]
    dpm_steps: tuple[int, ...]
    ema_stds: tuple[float, ...]
    guide_scales: tuple[float, ...]
    snapshot_every: int
    # the post-hoc run samples with this (at its end and for every reconstructed std); it trains as DDPM does
    posthoc_sampler: tuple[str, ...] = ("method=ddim", "sampler.steps=50")


FULL = Settings(("checkpoint.save_every_n_epochs=10",), heun_steps=(5, 9, 18), ddim_steps=(10, 20, 50),
                dpm_steps=(5, 10, 20), ema_stds=(0.02, 0.05, 0.10, 0.15, 0.2), guide_scales=(1.5, 2.0, 3.0),
                snapshot_every=50)
# A reduced budget for busy CPUs without bf16 hardware (there bf16 autocast, the default run's precision, is several
# times slower than fp32): 20 epochs in fp32, 200 samples per row. Its figures are not checked against the targets.
SMALL = Settings(("trainer.epochs=20", "trainer.precision=fp32", "evaluator.num_samples=200",
                  "checkpoint.save_every_n_epochs=10"), heun_steps=(5, 9, 18), ddim_steps=(10, 20, 50),
                 dpm_steps=(5, 10, 20), ema_stds=(0.02, 0.05, 0.10, 0.15, 0.2), guide_scales=(1.5, 2.0, 3.0),
                 snapshot_every=20)
QUICK = Settings((*QUICK_RUN, "trainer.epochs=2", "checkpoint.save_every_n_epochs=1"), heun_steps=(3, 5),
                 ddim_steps=(5,), dpm_steps=(5,), ema_stds=(0.05, 0.10), guide_scales=(2.0,), snapshot_every=1,
                 posthoc_sampler=("method=ddim", "sampler.steps=5"))


def steps_list(steps: Sequence[int]) -> str:
    return f"evaluator.sampler_steps=[{','.join(map(str, steps))}]"


def reused_seconds(run_dir: Path) -> float | None:
    """The training seconds of a finished run in ``run_dir`` (``--reuse``: the sum of its epochs), else None."""
    if not (run_dir / "eval.json").is_file():
        return None
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return sum(r.get("epoch_seconds", 0.0) for r in records)


def evaluate(run_dir: Path, directory: Path, label: str, overrides: Sequence[str],
             spacing: str = "leading") -> list[SamplerRow]:
    """:func:`evaluate_checkpoint`, or the rows an earlier invocation left in ``directory`` (``--reuse``)."""
    if REUSE and (directory / "eval.json").is_file():
        return sampler_rows(directory, label, spacing)
    return evaluate_checkpoint(run_dir, directory, label, overrides, spacing)


def train_runs(work: Path, settings: Settings) -> dict[str, tuple[Path, float]]:
    """The three runs and their wall seconds (with ``--reuse``, finished runs in the work folder are kept; any other
    run found there is set aside)."""
    runs = {
        "ddpm": list(settings.train),
        "edm": [*settings.train, "method=edm"],
        "posthoc": [*settings.train, "trainer.ema=posthoc", f"trainer.ema_snapshot_every={settings.snapshot_every}",
                    *settings.posthoc_sampler],
    }
    done = {name: reused_seconds(work / name) if REUSE else None for name in runs}
    return {name: (work / name, done[name] if done[name] is not None else train_into(overrides, work / name))
            for name, overrides in runs.items()}


def scored_count(settings: Settings) -> list[str]:
    """The training runs' evaluator.num_samples, so every row is scored at the same count as their own rows."""
    return [o for o in settings.train if o.startswith("evaluator.num_samples=")]


def score(runs: dict[str, tuple[Path, float]], work: Path, settings: Settings) -> dict[str, list[SamplerRow]]:
    ddpm, edm = runs["ddpm"][0], runs["edm"][0]
    n = scored_count(settings)
    rows = {
        "ddpm-1000": sampler_rows(ddpm, "DDPM"),  # the run's own final evaluation
        "edm-heun": evaluate(edm, work / "edm_heun", "EDM Heun", [steps_list(settings.heun_steps), *n]),
        "edm-dpm": evaluate(edm, work / "edm_dpm", "EDM DPM++(2M)",
                                       ["method=dpmpp_2m_karras", steps_list(settings.dpm_steps), *n]),
        "ddpm-heun": evaluate(ddpm, work / "ddpm_heun", "DDPM ckpt, Heun",
                                         ["method=heun", steps_list(settings.heun_steps), *n]),
        "ddpm-ddim": evaluate(ddpm, work / "ddpm_ddim", "DDPM ckpt, DDIM",
                                         ["method=ddim", steps_list(settings.ddim_steps), *n]),
        "ddpm-dpm": evaluate(ddpm, work / "ddpm_dpm", "DDPM ckpt, DPM-Solver++", [
            "method=dpm_solver", "sampler.timestep_spacing=trailing", steps_list(settings.dpm_steps), *n], "trailing"),
    }
    guide = "epoch_0010" if "checkpoint.save_every_n_epochs=10" in settings.train else "epoch_0001"
    for w in settings.guide_scales:
        rows[f"guide-{w:g}"] = evaluate(ddpm, work / f"guide_{w:g}", f"DDIM-50, guide w={w:g}", [
            "method=ddim", f"sampler.steps={max(settings.ddim_steps)}", f"sampler.guide={guide}",
            f"sampler.guide_scale={w}", *n])
    return rows


def posthoc_rows(runs: dict[str, tuple[Path, float]], work: Path, settings: Settings) -> list[tuple[str, SamplerRow]]:
    """The post-hoc run's own (tracked, std 0.10) EMA and each reconstructed std, all sampled with
    ``settings.posthoc_sampler``."""
    run_dir, out = runs["posthoc"][0], work / "posthoc_sweep"
    stds = ",".join(f"{s:g}" for s in settings.ema_stds)
    run_into(["task=posthoc_ema", f"run_dir={run_dir}", f"ema.std=[{stds}]", *settings.posthoc_sampler,
              *scored_count(settings)], out)
    rows = [("trained EMA (std 0.10, last)", sampler_rows(run_dir, "DDIM")[0])]
    rows += [(f"reconstructed std {s:g}", sampler_rows(out / f"std_{s:g}", "DDIM")[0]) for s in settings.ema_stds]
    return rows


def nfe_of(row: SamplerRow) -> int:
    record = next(r for r in [read_eval(row.directory), *read_eval(row.directory).get("sampler_steps", [])]
                  if r.get("steps") == row.steps)
    return int(record.get("nfe", row.steps))


def fd(row: SamplerRow) -> float:
    return row.scores["fd"].value


def tables(rows: dict[str, list[SamplerRow]], posthoc: list[tuple[str, SamplerRow]], settings: Settings) -> list[str]:
    header = ["checkpoint, sampler", "steps", "NFE", "FD", "FD floor", "ms / sample"]
    cells = [[r.label, str(r.steps), str(nfe_of(r)), fmt_score(r.scores.get("fd")),
              fmt(r.scores["fd"].floor), fmt(r.seconds_per_sample * 1e3)] for group in rows.values() for r in group]
    ema = [[name, fmt_score(r.scores.get("fd")), fmt(r.scores["fd"].floor)] for name, r in posthoc]
    return [*markdown_table(header, cells), "", f"Post-hoc EMA (`{' '.join(settings.posthoc_sampler)}` on each):", "",
            *markdown_table(["EMA", "FD", "FD floor"], ema)]


def plot_fd_vs_nfe(rows: dict[str, list[SamplerRow]], path: Path) -> Path:
    """FD against network evaluations, one line per checkpoint and solver (DDPM-1000 as a star), floor dashed."""
    from experiments.studies.common import new_axes, save_fd_figure

    figure, axes = new_axes(6.5, 4.2)
    for key, group in rows.items():
        if key.startswith("guide-"):
            continue  # autoguidance rows share DDIM-50's NFE: they are the table's, not a curve
        single = len(group) == 1
        axes.plot([nfe_of(r) for r in group], [fd(r) for r in group], marker="*" if single else "o",
                  markersize=11 if single else 5, label=f"{group[0].label}" + (f" {group[0].steps}" if single else ""))
    floor = rows["ddpm-1000"][0].scores["fd"].floor
    return save_fd_figure(figure, axes, path, floor, {"fontsize": 7}, xscale="log", yscale="log",
                          xlabel="network evaluations (NFE)", ylabel="FD (lower is better)",
                          title="FD against sampling cost: EDM and DDPM checkpoints")


def verdicts(rows: dict[str, list[SamplerRow]], posthoc: list[tuple[str, SamplerRow]],
             settings: Settings) -> list[tuple[bool, str]]:
    reference = fd(rows["ddpm-1000"][0])
    edm_heun = next(r for r in rows["edm-heun"] if r.steps == max(settings.heun_steps))
    ddpm_heun = next(r for r in rows["ddpm-heun"] if r.steps == max(settings.heun_steps))
    best_std = min(posthoc[1:], key=lambda item: fd(item[1]))
    guided = {w: fd(rows[f"guide-{w:g}"][0]) for w in settings.guide_scales}
    best_w = min(guided, key=guided.get)
    unguided = next(r for r in rows["ddpm-ddim"] if r.steps == max(settings.ddim_steps))
    return [
        (fd(edm_heun) <= HEUN_BAR * reference,
         f"EDM Heun-{edm_heun.steps} ({nfe_of(edm_heun)} NFE) FD within {HEUN_BAR:g}x of the DDPM run's "
         f"DDPM-1000 FD: {fd(edm_heun):.3g} vs {reference:.3g} ({fd(edm_heun) / reference:.2f}x)"),
        (fd(ddpm_heun) <= DDPM_HEUN_BAR * reference,
         f"the DDPM checkpoint with Heun-{ddpm_heun.steps} ({nfe_of(ddpm_heun)} NFE) within {DDPM_HEUN_BAR:g}x of its "
         f"DDPM-1000 FD: {fd(ddpm_heun):.3g} vs {reference:.3g} ({fd(ddpm_heun) / reference:.2f}x)"),
        (True, f"post-hoc EMA: best {best_std[0]} FD {fd(best_std[1]):.3g} against the trained EMA's "
               f"{fd(posthoc[0][1]):.3g} (reported, no bar)"),
        (True, f"autoguidance: best w = {best_w:g} FD {guided[best_w]:.3g} against unguided DDIM-"
               f"{unguided.steps} {fd(unguided):.3g} ({'better' if guided[best_w] < fd(unguided) else 'not better'};"
               " reported, no bar)"),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_flags(parser, out_help="also write the markdown report here")
    add_work_flags(parser)
    parser.add_argument("--budget", choices=("full", "small"), default="full",
                        help="full: the default run's length and precision (the targets'); small: 20 epochs in "
                             "fp32 and 200 samples per row, for a busy CPU")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    global REUSE
    REUSE = args.reuse
    settings = QUICK if args.quick else SMALL if args.budget == "small" else FULL
    start, machine = time.perf_counter(), describe_machine()
    work = (args.work_dir or work_dir("benchmarks", "edm")).resolve()
    runs = train_runs(work, settings)
    rows, posthoc = score(runs, work, settings), posthoc_rows(runs, work, settings)
    times = ", ".join(f"{name} {seconds / 60:.1f} min" for name, (_, seconds) in runs.items())
    method = (f"Runs: `{shown_command(settings.train)}` (+ `method=edm`; + `trainer.ema=posthoc "
              f"trainer.ema_snapshot_every={settings.snapshot_every} {' '.join(settings.posthoc_sampler)}`), "
              f"trained in {times} (same epochs and network: "
              "the same budget). Scored: each run's best EMA checkpoint, the evaluator's samples per row from sampler "
              "seed 0; FD on the digit classifier's features, floors from held-out real digits; ± standard error.")
    plot = plot_fd_vs_nfe(rows, figure_path(args, work, "fd_vs_nfe.png"))
    table = [*tables(rows, posthoc, settings), "", f"![FD against NFE]({plot.name})"]
    text, passed = checks_report("EDM, sigma-space samplers, post-hoc EMA and autoguidance on digits",
                                 machine, method, table, verdicts(rows, posthoc, settings),
                                 time.perf_counter() - start, reproduce_command("experiments.benchmarks.edm", argv))
    return finish_report(text, passed, args)


if __name__ == "__main__":
    sys.exit(main())

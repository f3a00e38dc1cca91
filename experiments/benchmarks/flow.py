"""On digits: flow matching against DDPM at the same budget, the flow solvers, couplings, reflow and likelihood.

Trains, at the default run's budget (its network, epochs and trainer), four runs and one reflow with ``python
run.py``, and scores every checkpoint with ``task=evaluate`` on 3 disjoint seed sets (``evaluator.seeds=[0,1,2]``)
of 500 samples (FD: mean and standard deviation over the sets), as a user would:

    DDPM        the default run: DDPM-1000, DDIM-50, DPM-Solver++-20
    flow        experiment=digits_flow (linear path, logit-normal times): Euler 4/8/16/32, Heun 9/18 (17/35 NFE),
                dopri5 (its counted NFE), Euler-Maruyama 50
    cosine      the same with method.path=cosine (SiT's GVP); the same solvers
    OT          the same with method.coupling=ot (minibatch exact OT pairs); the same solvers
    reflow      task=reflow of the flow run (pairs by its dopri5 ODE; the flow run's optimizer steps): Euler 1/2/4

with the straightness S(Z) of each coupling (independent, OT, reflowed) and the NLL in bits/dim of the DDPM and flow
runs (digits' 17 ink levels dequantized over one level, 0.125 in [-1, 1]). The targets: the flow's Heun-18 FD no
worse than the DDPM run's DDPM-1000 FD (mean of the sets, within one standard deviation); its Euler-16 FD within
1.25x of it; the reflowed flow's 1-step Euler FD below the consistency student's 1-step FD the distillation
benchmark reports; OT and reflow each at most half the independent coupling's straightness.

    python -m experiments.benchmarks.flow --threads 1 --out experiments/benchmarks/flow_cpu.md
    python -m experiments.benchmarks.flow --quick --out /tmp/flow.md    # toy runs, seconds each: proves it works

Runs go under ``outputs/benchmarks/`` (git-ignored) unless ``--work-dir`` says otherwise.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from diffusion.storage import checkpoint
from diffusion.storage.file_manager import load_checkpoint
from experiments.lib import (
    QUICK_NUM_TIMESTEPS,
    QUICK_RUN,
    checks_report,
    describe_machine,
    figure_path,
    finish_report,
    fmt,
    markdown_table,
    parse_work_args,
    read_eval,
    reproduce_command,
    run_into,
    shown_command,
    shown_path,
    spread_score,
    work_dir,
)

REUSE = False  # --reuse
EULER_BAR = 1.25  # the flow's Euler-16 FD at most this multiple of the DDPM run's DDPM-1000 FD
STRAIGHTNESS_CUT = 2.0  # OT and reflow each divide the independent coupling's straightness by at least this
CONSISTENCY_ONE_STEP_FD = 7.17  # experiments/benchmarks/distill_cpu.md: the consistency student's 1-step FD
DIGITS_LEVEL = 0.125  # one of the digits' 17 ink levels (0..16) in [-1, 1]


@dataclass(frozen=True)
class Settings:
    train: tuple[str, ...]  # what every run shares (the default run's budget)
    score: tuple[str, ...]  # every evaluation's count and seed sets
    euler_steps: tuple[int, ...]
    heun_steps: tuple[int, ...]
    em_steps: tuple[int, ...]
    reflow_steps: tuple[int, ...]
    ddim_steps: int
    dpm_steps: int
    reflow: tuple[str, ...]  # the pairs and their solver
    likelihood: tuple[str, ...]
    every_solver: tuple[str, ...]  # the flow runs sampled by every solver (the others: the first Euler only)


FULL = Settings(
    train=("evaluator.seeds=[0,1,2]",), score=("evaluator.num_samples=500", "evaluator.seeds=[0,1,2]"),
    euler_steps=(4, 8, 16, 32), heun_steps=(9, 18), em_steps=(50,), reflow_steps=(1, 2, 4), ddim_steps=50,
    dpm_steps=20, reflow=("reflow.num_pairs=10000", "sampler.solver=dopri5", "sampler.atol=1e-4", "sampler.rtol=1e-4"),
    likelihood=("evaluator.likelihood_samples=200",), every_solver=("flow", "cosine", "ot"))
QUICK = Settings(
    train=(*QUICK_RUN, "evaluator.seeds=[0,1,2]"), score=("evaluator.seeds=[0,1,2]",), euler_steps=(2,),
    heun_steps=(2,), em_steps=(3,), reflow_steps=(1,), ddim_steps=5, dpm_steps=5,
    reflow=("reflow.num_pairs=40", "reflow.chunk_size=20", "sampler.solver=euler", "sampler.steps=4"),
    likelihood=("evaluator.likelihood_samples=4", "evaluator.hutchinson_samples=1"), every_solver=("flow",))
FLOWS = {"flow": "linear + logit-normal", "cosine": "cosine + logit-normal", "ot": "linear + logit-normal + OT"}


class Row(NamedTuple):
    """One scored sampler setting: FD as the mean and standard deviation over the seed sets."""

    run: str
    sampler: str
    steps: int
    nfe: int
    fd: float
    std: float
    floor: float | None
    ms_per_sample: float
    payload: dict[str, Any]  # the whole eval.json (straightness, nll)


def row_of(run: str, sampler: str, payload: dict[str, Any]) -> Row:
    fd, std, floor = spread_score(payload)
    return Row(run, sampler, payload["steps"], payload["nfe"], fd, std, floor, payload["seconds_per_sample"] * 1e3,
               payload)


def evaluate(run_dir: Path, out: Path, overrides: Sequence[str], settings: Settings) -> dict[str, Any]:
    """``task=evaluate`` of ``run_dir`` into ``out`` (``--reuse``: an earlier invocation's result there)."""
    if not (REUSE and (out / "eval.json").is_file()):
        run_into(["task=evaluate", f"run_dir={shown_path(run_dir)}", *overrides, *settings.score], out)
    return read_eval(out)


def train(overrides: Sequence[str], run_dir: Path) -> Path:
    if not (REUSE and (run_dir / "eval.json").is_file()):
        run_into(overrides, run_dir)
    return run_dir


def train_runs(work: Path, settings: Settings) -> dict[str, Path]:
    """The DDPM run, the three flows and the reflow of the first flow (with its optimizer steps)."""
    flow = ["experiment=digits_flow", *settings.train]
    runs = {"ddpm": train(settings.train, work / "ddpm"), "flow": train(flow, work / "flow"),
            "cosine": train([*flow, "method.path=cosine"], work / "cosine"),
            "ot": train([*flow, "method.coupling=ot"], work / "ot")}
    steps = checkpoint.global_step(load_checkpoint(runs["flow"] / "checkpoints" / "last.pt"))
    runs["reflow"] = train(["task=reflow", f"run_dir={shown_path(runs['flow'])}", *settings.reflow, *settings.train,
                            f"trainer.max_steps={steps}"], work / "reflow")  # model and method: the teacher's
    return runs


def ddpm_rows(runs: dict[str, Path], work: Path, settings: Settings) -> list[Row]:
    ddpm = runs["ddpm"]
    steps = QUICK_NUM_TIMESTEPS if settings is QUICK else 1000
    scored = [
        row_of("DDPM", f"DDPM-{steps}", read_eval(ddpm)),  # the run's own final evaluation
        row_of("DDPM", f"DDIM-{settings.ddim_steps}", evaluate(ddpm, work / "ddpm_ddim", [
            "method=ddim", f"sampler.steps={settings.ddim_steps}", "evaluator.likelihood=true",
            f"evaluator.dequantization={DIGITS_LEVEL}", *settings.likelihood], settings)),
        row_of("DDPM", f"DPM-Solver++-{settings.dpm_steps}", evaluate(ddpm, work / "ddpm_dpm", [
            "method=dpm_solver", "sampler.timestep_spacing=trailing", f"sampler.steps={settings.dpm_steps}"],
            settings)),
    ]
    return scored


def flow_samplers(settings: Settings) -> list[tuple[str, list[str]]]:
    return [*((f"Euler-{n}", ["sampler.solver=euler", f"sampler.steps={n}"]) for n in settings.euler_steps),
            *((f"Heun-{n}", ["sampler.solver=heun", f"sampler.steps={n}"]) for n in settings.heun_steps),
            ("dopri5", ["sampler.solver=dopri5", "sampler.atol=1e-4", "sampler.rtol=1e-4"]),
            *((f"Euler-Maruyama-{n}", ["sampler.solver=euler_maruyama", f"sampler.steps={n}"])
              for n in settings.em_steps)]


def flow_rows(runs: dict[str, Path], work: Path, settings: Settings) -> list[Row]:
    """Every flow run with its solvers; the first evaluation of each also scores the straightness (and, on the
    first flow, the NLL); the reflowed run with Euler at ``reflow_steps``."""
    rows = []
    for name, label in {**FLOWS, "reflow": "2-rectified flow"}.items():
        samplers = (flow_samplers(settings) if name in settings.every_solver else flow_samplers(settings)[:1])
        if name == "reflow":
            samplers = [(f"Euler-{n}", ["sampler.solver=euler", f"sampler.steps={n}"]) for n in settings.reflow_steps]
        for position, (sampler, overrides) in enumerate(samplers):
            extra = [] if position else ["evaluator.straightness=true"]
            if name == "flow" and not position:
                extra += ["evaluator.likelihood=true", f"evaluator.dequantization={DIGITS_LEVEL}", *settings.likelihood]
            out = work / f"{name}_{sampler.lower().replace('-', '_')}"
            rows.append(row_of(label, sampler, evaluate(runs[name], out, [*overrides, *extra], settings)))
    return rows


def family(row: Row) -> str:
    """The solver without its step count: ``Euler``, ``Euler-Maruyama``, ``Heun``, ``dopri5``, ``DDIM``..."""
    head, _, steps = row.sampler.rpartition("-")
    return head if steps.isdigit() else row.sampler


def straightness_rows(rows: Sequence[Row]) -> dict[str, tuple[float, float]]:
    """S(Z) and its standard error per coupling (run), from the evaluations that scored it."""
    return {r.run: (r.payload["straightness"]["value"], r.payload["straightness"]["std_error"])
            for r in rows if "straightness" in r.payload}


def nll_rows(rows: Sequence[Row]) -> dict[str, dict[str, Any]]:
    return {r.run: r.payload["nll"] for r in rows if "nll" in r.payload}


def tables(rows: Sequence[Row]) -> list[str]:
    header = ["run", "sampler", "steps", "NFE", "FD (mean ± std of 3 sets)", "FD floor", "ms / sample"]
    cells = [[r.run, r.sampler, str(r.steps), str(r.nfe), f"{fmt(r.fd)} ± {fmt(r.std, '.2g')}", fmt(r.floor),
              fmt(r.ms_per_sample)] for r in rows]
    straight = [[run, f"{fmt(value, '.4g')} ± {fmt(error, '.2g')}"] for run, (value, error) in
                straightness_rows(rows).items()]
    nll = [[run, f"{fmt(e['value'], '.4g')} ± {fmt(e['std_error'], '.2g')} {e['unit']}", str(e["num_points"]),
            e["divergence"], str(e["nfe"])] for run, e in nll_rows(rows).items()]
    return [*markdown_table(header, cells), "", "Straightness S(Z) per coupling (100 Euler steps, per dimension):", "",
            *markdown_table(["coupling", "S(Z)"], straight), "",
            f"Negative log-likelihood of held-out digits (dequantized over one level, {DIGITS_LEVEL}):", "",
            *markdown_table(["run", "NLL", "points", "divergence", "ODE NFE"], nll)]


def plot_fd_vs_nfe(rows: Sequence[Row], path: Path) -> Path:
    """FD against network evaluations: one line per run and solver family, single settings as stars."""
    import matplotlib.pyplot as plt

    from experiments.studies.common import new_axes, save_fd_figure

    figure, axes = new_axes(6.5, 4.2)
    groups: dict[str, list[Row]] = {}
    for r in rows:
        groups.setdefault(f"{r.run}, {family(r) if r.run != 'DDPM' else r.sampler}", []).append(r)
    colors = plt.get_cmap("tab20").colors  # more lines than the default cycle's ten colours
    for (label, group), color in zip(groups.items(), itertools.cycle(colors)):
        single = len(group) == 1
        axes.errorbar([r.nfe for r in group], [r.fd for r in group], yerr=[r.std for r in group], capsize=2,
                      marker="*" if single else "o", markersize=10 if single else 4, label=label, color=color)
    return save_fd_figure(figure, axes, path, rows[0].floor, {"fontsize": 6, "ncol": 2}, xscale="log", yscale="log",
                          xlabel="network evaluations (NFE)", ylabel="FD (lower is better)",
                          title="FD against sampling cost: flow matching and DDPM on digits")


def find(rows: Sequence[Row], run: str, solver: str, largest: bool = True) -> Row:
    """The row of ``run`` sampled by ``solver`` (:func:`family`) at its most (or fewest) steps."""
    matching = [r for r in rows if r.run == run and family(r) == solver]
    return (max if largest else min)(matching, key=lambda r: r.steps)


def verdicts(rows: Sequence[Row], settings: Settings) -> list[tuple[bool, str]]:
    ddpm = rows[0]
    flow = FLOWS["flow"]
    heun, reflow = find(rows, flow, "Heun"), find(rows, "2-rectified flow", "Euler", largest=False)
    euler = next((r for r in rows if r.run == flow and r.sampler == "Euler-16"), find(rows, flow, "Euler"))
    straight = straightness_rows(rows)
    independent = straight[flow][0]
    checks = [
        (heun.fd <= ddpm.fd + ddpm.std,
         f"flow {heun.sampler} ({heun.nfe} NFE) FD no worse than the DDPM run's {ddpm.sampler} (within one standard "
         f"deviation of its sets): {heun.fd:.3g} vs {ddpm.fd:.3g} ± {ddpm.std:.2g}"),
        (euler.fd <= EULER_BAR * ddpm.fd,
         f"flow {euler.sampler} FD within {EULER_BAR:g}x of {ddpm.sampler}: {euler.fd:.3g} vs {ddpm.fd:.3g} "
         f"({euler.fd / ddpm.fd:.2f}x)"),
        (reflow.fd < CONSISTENCY_ONE_STEP_FD,
         f"2-rectified flow {reflow.sampler} FD below the consistency student's 1-step FD "
         f"(distill_cpu.md): {reflow.fd:.3g} vs {CONSISTENCY_ONE_STEP_FD:g}"),
    ]
    for run, name in ((FLOWS["ot"], "OT coupling"), ("2-rectified flow", "reflow")):
        value = straight[run][0]
        checks.append((value * STRAIGHTNESS_CUT <= independent,
                       f"{name} cuts the straightness by at least {STRAIGHTNESS_CUT:g}x: {value:.4g} vs the "
                       f"independent coupling's {independent:.4g} ({independent / value:.2f}x)"))
    return checks


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_work_args(__doc__, argv)
    global REUSE
    REUSE = args.reuse
    settings = QUICK if args.quick else FULL
    start, machine = time.perf_counter(), describe_machine()
    work = (args.work_dir or work_dir("benchmarks", "flow")).resolve()
    runs = train_runs(work, settings)
    rows = [*ddpm_rows(runs, work, settings), *flow_rows(runs, work, settings)]
    method = (f"Runs: `{shown_command(settings.train)}` (DDPM), + `experiment=digits_flow` (flow), + "
              "`method.path=cosine`, + `method.coupling=ot`: the same network, epochs and trainer; the reflow: "
              f"`task=reflow run_dir=<flow> {' '.join(settings.reflow)}` for the flow run's optimizer steps. Scored: "
              f"each run's best EMA checkpoint, `{' '.join(settings.score)}` (disjoint sample sets of one stream); FD "
              "on the digit classifier's features, floors from held-out real digits; ± is the standard deviation "
              "over the sets (straightness and NLL: the standard error).")
    plot = plot_fd_vs_nfe(rows, figure_path(args, work, "fd_vs_nfe.png"))
    table = [*tables(rows), "", f"![FD against NFE]({plot.name})"]
    text, passed = checks_report("Flow matching, its solvers, couplings and reflow against DDPM on digits", machine,
                                 method, table, verdicts(rows, settings), time.perf_counter() - start,
                                 reproduce_command("experiments.benchmarks.flow", argv))
    return finish_report(text, passed, args)


if __name__ == "__main__":
    sys.exit(main())

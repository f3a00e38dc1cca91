"""Holding up under CPU load: training throughput of one run alone, and of two runs started together,
first with torch's default threads (one per CPU each), then with the thread budget (``num_threads=auto``
told that two jobs share the node through ``$DIFFUSION_JOBS_PER_NODE=2``, as a joblib launcher's ``n_jobs`` would).

Throughput is the median of the epochs' ``samples_per_second`` in ``metrics.jsonl``, the first epoch left out
(start-up, and the two runs' epochs overlap only once both have imported torch). A two-run figure is each run's
throughput over the alone run's; the goal is that with the budget each keeps at least 40% (an even split of the
CPUs is 50%). Every run trains a small U-Net on digits for three epochs, samples a few DDIM samples at the end and
scores nothing.

    python -m experiments.benchmarks.speed.threads --out experiments/benchmarks/speed/threads_cpu.md
    python -m experiments.benchmarks.speed.threads --quick          # toy MLP on moons, 2 epochs: proves the script works

``--threads`` sets this script's own threads only: each run's thread count is what the scenario measures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from experiments.lib import (
    LOG_TAIL_CHARS,
    ROOT,
    add_common_flags,
    checks_report,
    describe_machine,
    finish_report,
    fmt,
    markdown_table,
    reproduce_command,
    run_py_command,
    run_py_env,
    set_threads,
    shown_command,
    shown_path,
    work_dir,
)
from diffusion.runtime.threads import JOBS_ENV, cpu_limit

GOAL = 0.40  # of the alone throughput, each of two concurrent runs
RUN = ("method=ddim", "sampler.steps=10", "sampler.num_samples=10", "evaluator=none", "trainer.progress=false")
# The measured run: three epochs of digits with a 37k-parameter U-Net in fp32, 13 steps an epoch. Not the default
# 0.9M-parameter bf16 model: on 2 busy cores without bf16 hardware one of its epochs took over 4 minutes with
# torch's default threads, which the two-at-once row would double.
MEASURED = ("model.base_channels=8", "model.num_res_blocks=1", "trainer.precision=fp32", "trainer.epochs=3")
# --quick: two epochs of a small MLP on 600 moons points (about 10 s a run, most of it start-up). Not the digits toy
# model of the other scripts: with torch's default threads on busy cores an epoch of that takes 15 s.
QUICK = ("experiment=moons_mlp", "data.num_samples=600", "model.hidden_dim=32", "model.num_layers=2",
         "method.num_timesteps=20", "trainer.epochs=2")


class Scenario(NamedTuple):
    name: str
    runs: int
    threads: str  # num_threads
    environ: Mapping[str, str]


def scenarios(cpus: int) -> list[Scenario]:
    default = str(cpus)  # what torch starts with: one intra-op thread per CPU it sees
    return [
        Scenario("alone, torch's default threads", 1, default, {}),
        Scenario("two at once, torch's default threads", 2, default, {}),
        Scenario(f"two at once, num_threads=auto, ${JOBS_ENV}=2", 2, "auto", {JOBS_ENV: "2"}),
    ]


def run_together(overrides: Sequence[str], run_dirs: Sequence[Path], environ: Mapping[str, str]) -> None:
    """Start ``run.py`` into each of ``run_dirs`` at once and wait for all.

    Raises:
        RuntimeError: a run failed; the message holds its command and the end of its log.
    """
    env = {**run_py_env(), **environ}
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # num_threads decides, as on a user's shell
        env.pop(name, None)
    started = []
    for run_dir in run_dirs:
        arguments = [*overrides, f"hydra.run.dir={shown_path(run_dir)}"]
        print(f"$ {' '.join(f'{k}={v}' for k, v in environ.items())} {shown_command(arguments)} &", flush=True)
        log = run_dir.with_suffix(".log")
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as handle:
            process = subprocess.Popen(run_py_command(arguments), cwd=ROOT, env=env, stdout=handle,
                                       stderr=subprocess.STDOUT)
        started.append((process, arguments, log))
    for process, arguments, log in started:
        if process.wait() != 0:
            tail = log.read_text(errors="replace")[-LOG_TAIL_CHARS:]
            raise RuntimeError(f"run.py exited with {process.returncode}: {shown_command(arguments)}\n{tail}")


def throughput(run_dir: Path) -> float:
    """Median training samples per second over the epochs after the first."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["samples_per_second"] for r in records if "samples_per_second" in r]
    return float(statistics.median(rates[1:] or rates))


def threads_line(run_dir: Path) -> str:
    """The thread count the run's banner reports (``train.log``)."""
    for line in (run_dir / "train.log").read_text().splitlines():
        if " threads); " in line:
            return line.split(", ")[1].split(" threads")[0]
    return "?"


def measure(args: argparse.Namespace) -> tuple[list[list[str]], dict[str, list[float]]]:
    cpus = int(cpu_limit()[0])
    overrides = [*RUN, *(QUICK if args.quick else MEASURED)]
    root = args.work_dir or work_dir("benchmarks", "threads")
    rates: dict[str, list[float]] = {}
    rows = []
    for index, scenario in enumerate(scenarios(cpus)):
        run_dirs = [root / f"{index}-{k}" for k in range(scenario.runs)]
        start = time.perf_counter()
        run_together([*overrides, f"num_threads={scenario.threads}"], run_dirs, scenario.environ)
        rates[scenario.name] = [throughput(d) for d in run_dirs]
        alone = rates[scenarios(cpus)[0].name][0]
        rows.append([scenario.name, str(scenario.runs), ", ".join(threads_line(d) for d in run_dirs),
                     ", ".join(fmt(r, ".0f") for r in rates[scenario.name]),
                     ", ".join(fmt(r / alone, ".2f") for r in rates[scenario.name]),
                     fmt(time.perf_counter() - start, ".0f")])
    return rows, rates


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_flags(parser, out_help="also write the markdown report here")
    parser.add_argument("--work-dir", type=Path, help="where the runs go (default: outputs/benchmarks/threads-<time>/)")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    start, machine = time.perf_counter(), describe_machine()
    rows, rates = measure(args)
    names = list(rates)
    alone = rates[names[0]][0]
    budget, default = [r / alone for r in rates[names[2]]], [r / alone for r in rates[names[1]]]
    source = cpu_limit()[1]
    method = (
        f"Each run: `{shown_command([*RUN, *(QUICK if args.quick else MEASURED)])}` "
        f"({'--quick: a toy MLP on moons' if args.quick else 'digits, a 37k-parameter U-Net'}). Throughput: median "
        f"training samples/s of the epochs after the first (`metrics.jsonl`). The two runs of a row start together. "
        f"CPUs: {source}. The machine is shared with other engineers' jobs (load average in the header), so "
        "every figure carries their load too."
    )
    table = markdown_table(["scenario", "runs", "threads each", "samples/s each", "of alone", "wall s"], rows)
    checks = [
        (min(budget) >= GOAL, f"with the thread budget each of two concurrent runs keeps >= {GOAL:.0%} of the alone "
                              f"throughput: {', '.join(f'{r:.0%}' for r in budget)}"),
        (True, f"(for comparison) with torch's default threads: {', '.join(f'{r:.0%}' for r in default)}"),
    ]
    text, passed = checks_report("Two training runs on one node: the thread budget", machine, method,
                                 table, checks, time.perf_counter() - start,
                                 reproduce_command("experiments.benchmarks.speed.threads", argv))
    return finish_report(text, passed, args)


if __name__ == "__main__":
    raise SystemExit(main())

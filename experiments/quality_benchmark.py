"""Issue 3's bar: sample quality against sampling cost on the default run, for DDPM, DDIM and DPM-Solver++.

Trains the default run (``python run.py``) unless ``--run-dir`` names one, then scores its best EMA checkpoint with
``task=evaluate`` once per sampling method, as a user would:

    DDPM          all 1000 steps                      (the default run's own sampler)
    DDIM          10, 20, 50, 100 steps, leading      (eta = 0, the default spacing)
    DPM-Solver++  10, 20 steps, trailing spacing      (the spacing its config recommends)

Every row draws the same number of samples (``evaluator.num_samples``, 500 by default) from the same seed and is
scored by the digits evaluator: FD and KID on the shipped classifier's features, each beside its real-data floor
at the same sample count, and the sampling wall time per sample. The targets (issue 3, after Song et al. 2021,
Table 1): DDIM-50's FD within 25% of DDPM-1000's while at least 15x faster, and the default run's FD at most 4x its
real-data floor. Prints a markdown report (and writes it with ``--output``); exits 1 if a target is missed.

    python experiments/quality_benchmark.py --output experiments/results/quality_cpu.md
    python experiments/quality_benchmark.py --run-dir outputs/2024-05-01/12-00-00     # score an earlier run

Runs go under ``outputs/benchmarks/`` (git-ignored) unless ``--work-dir`` says otherwise. The helpers here that
launch ``run.py`` and read its ``eval.json`` are shared with ``guidance_benchmark.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from anywhere without installing the package
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from diffusion.file_manager import load_checkpoint  # noqa: E402

DDIM_STEPS = (10, 20, 50, 100)
DPM_SOLVER_STEPS = (10, 20)
FD_TOLERANCE = 1.25  # DDIM-50's FD may exceed DDPM-1000's by at most 25%
MIN_SPEEDUP = 15.0  # ... while sampling at least this many times faster
MAX_FLOOR_RATIO = 4.0  # the default run's FD at most this multiple of its real-data floor


# ------------------------------------------------------------------------------------------- shared helpers


class Score(NamedTuple):
    """One metric of ``eval.json``: its value, standard error (None if unknown) and real-data floor."""

    value: float
    std_error: float | None
    floor: float | None


class Row(NamedTuple):
    """One scored sampler setting of one checkpoint."""

    label: str  # the method: "DDPM", "DDIM" or "DPM-Solver++(2M)"
    steps: int
    spacing: str
    num_samples: int
    scores: dict[str, Score]
    seconds_per_sample: float
    directory: Path  # the task=evaluate output directory (eval.json, samples.npz)


def run_py(overrides: Sequence[str], directory: Path) -> float:
    """Run ``python run.py <overrides> hydra.run.dir=<directory>`` from the repository root and return its wall
    seconds; its output goes to ``<directory>.log``. It inherits the environment (``OMP_NUM_THREADS``: see
    :func:`limit_threads`).

    Raises:
        RuntimeError: if run.py fails; the message holds the command and the end of its output.
    """
    directory.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "run.py", *overrides, f"hydra.run.dir={directory}"]
    log_path = directory.with_suffix(".log")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    print(f"$ {' '.join(command[1:])}", flush=True)
    start = time.perf_counter()
    with log_path.open("w") as log:
        result = subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"run.py exited with {result.returncode}: {' '.join(command[1:])}\n{tail}")
    print(f"  done in {seconds:.0f} s", flush=True)
    return seconds


def limit_threads(threads: int | None) -> None:
    """Give every run.py launched from now on ``threads`` CPU threads (None: torch's default, one per core).

    On a machine shared with other jobs, one thread per process is far faster than torch's default: with more
    threads than free cores, OpenMP threads wait on one another at every operation (measured here beside five
    other jobs: a tiny 2-epoch run took 10 min with torch's 2 threads, a like one right after 23 s with 1).
    """
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def read_eval(directory: Path) -> dict[str, Any]:
    return json.loads((directory / "eval.json").read_text())


def scores_of(record: dict[str, Any]) -> dict[str, Score]:
    """The metrics of one ``eval.json`` record (the top level or an entry of its ``sampler_steps`` list)."""
    return {
        name: Score(entry["value"], entry.get("std_error"), entry.get("floor"))
        for name, entry in record.items()
        if isinstance(entry, dict) and "value" in entry
    }


def evaluate_rows(
    run_dir: Path,
    directory: Path,
    label: str,
    overrides: Sequence[str],
    spacing: str = "leading",
    num_samples: int | None = None,
) -> list[Row]:
    """Score ``run_dir``'s best checkpoint with ``task=evaluate <overrides>``: one row per entry of
    ``evaluator.sampler_steps`` when the overrides set it, else one row for the sampler's own setting.
    ``num_samples`` overrides ``evaluator.num_samples`` (None: the evaluator's default)."""
    count = [] if num_samples is None else [f"evaluator.num_samples={num_samples}"]
    run_py(["task=evaluate", f"run_dir={run_dir}", *overrides, *count], directory)
    payload = read_eval(directory)
    records = payload.get("sampler_steps") or [payload]
    return [
        Row(label, r["steps"], spacing, r["num_samples"], scores_of(r), r["seconds_per_sample"], directory)
        for r in records
    ]


def best_epoch(run_dir: Path) -> int:
    return int(load_checkpoint(run_dir / "checkpoints" / "best.pt")["epoch"])


def machine_line() -> str:
    """Date, CPU, core count, torch version and threads, load average and commit: what the timings depend on."""
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")] if cpuinfo.is_file() else []
    cpu = names[0] if names else platform.processor() or platform.machine()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (
        f"{datetime.now():%Y-%m-%d %H:%M} · {cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads) · load average {load} · {git_revision()}"
    )


def git_revision() -> str:
    """``commit abc1234``, plus a note when the code (``run.py``, ``diffusion/``, ``conf/``) differs from it; results
    files do not count. Read-only: no index refresh."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, env=env)
    if head.returncode != 0:
        return "commit n/a"
    code = ["run.py", "diffusion", "conf"]
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", *code], cwd=ROOT, capture_output=True, env=env)
    return f"commit {head.stdout.strip()}" + (" + uncommitted changes" if dirty.returncode == 1 else "")


def fmt(x: float | None, spec: str = ".3g") -> str:
    return "n/a" if x is None else format(x, spec)


def fmt_score(score: Score | None, spec: str = ".3g") -> str:
    if score is None:
        return "n/a"
    return fmt(score.value, spec) + (f" ± {fmt(score.std_error, '.2g')}" if score.std_error is not None else "")


def verdict(passed: bool, text: str) -> str:
    return f"- **{'PASS' if passed else 'FAIL'}** {text}"


def reproduce_command(argv: Sequence[str] | None) -> str:
    """The command line that made this report (the script path relative to the repository root)."""
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(ROOT) if script.is_relative_to(ROOT) else script
    return shlex.join(["python", str(shown), *(sys.argv[1:] if argv is None else argv)])


def default_work_dir(name: str) -> Path:
    return ROOT / "outputs" / "benchmarks" / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"


def write_report(text: str, output: Path | None) -> None:
    print("\n" + text)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
        print(f"wrote {output}")


# ------------------------------------------------------------------------------------------- this benchmark


def steps_list(steps: Sequence[int]) -> str:
    return "[" + ",".join(str(s) for s in steps) + "]"


def score_default_run(run_dir: Path, work: Path, num_samples: int | None = None) -> list[Row]:
    """DDPM-1000, DDIM at ``DDIM_STEPS`` and DPM-Solver++ at ``DPM_SOLVER_STEPS`` on ``run_dir``'s checkpoint."""
    ddpm = evaluate_rows(run_dir, work / "ddpm", "DDPM", ["method=ddpm"], "all", num_samples)
    # sampler.steps sets the (discarded) main pass; the rows come from evaluator.sampler_steps.
    ddim = evaluate_rows(
        run_dir, work / "ddim", "DDIM",
        ["method=ddim", f"sampler.steps={DDIM_STEPS[0]}", f"evaluator.sampler_steps={steps_list(DDIM_STEPS)}"],
        num_samples=num_samples,
    )
    dpm = evaluate_rows(
        run_dir, work / "dpm_solver", "DPM-Solver++(2M)",
        ["method=dpm_solver", "sampler.timestep_spacing=trailing", f"sampler.steps={DPM_SOLVER_STEPS[0]}",
         f"evaluator.sampler_steps={steps_list(DPM_SOLVER_STEPS)}"],
        spacing="trailing",
        num_samples=num_samples,
    )
    return ddpm + ddim + dpm


def rows_table(rows: Sequence[Row], reference: Row) -> str:
    """Markdown: FD and KID (± standard error) with floors, FD / floor, seconds per sample and speed-up."""
    header = ["sampler", "steps", "spacing", "FD", "FD floor", "FD / floor", "KID", "KID floor", "ms / sample",
              f"speed-up vs {reference.label}-{reference.steps}"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        fd, kid = row.scores.get("fd"), row.scores.get("kid")
        ratio = fd.value / fd.floor if fd is not None and fd.floor else None
        cells = [
            row.label, str(row.steps), row.spacing, fmt_score(fd), fmt(fd.floor if fd else None), fmt(ratio, ".2f"),
            fmt_score(kid), fmt(kid.floor if kid else None), fmt(row.seconds_per_sample * 1e3, ".3g"),
            f"{reference.seconds_per_sample / row.seconds_per_sample:.1f}x",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def find_row(rows: Sequence[Row], label: str, steps: int) -> Row:
    return next(row for row in rows if row.label == label and row.steps == steps)


def verdicts(rows: Sequence[Row]) -> list[tuple[bool, str]]:
    ddpm, ddim50 = find_row(rows, "DDPM", 1000), find_row(rows, "DDIM", 50)
    fd_ddpm, fd_ddim = ddpm.scores["fd"], ddim50.scores["fd"]
    speedup = ddpm.seconds_per_sample / ddim50.seconds_per_sample
    floor_ratio = fd_ddpm.value / fd_ddpm.floor
    change = fd_ddim.value / fd_ddpm.value - 1.0
    return [
        (fd_ddim.value <= FD_TOLERANCE * fd_ddpm.value,
         f"DDIM-50 FD within {FD_TOLERANCE - 1:.0%} of DDPM-1000: {fd_ddim.value:.3g} vs {fd_ddpm.value:.3g} "
         f"({change:+.0%})"),
        (speedup >= MIN_SPEEDUP, f"DDIM-50 at least {MIN_SPEEDUP:.0f}x faster than DDPM-1000: {speedup:.1f}x"),
        (floor_ratio <= MAX_FLOOR_RATIO,
         f"default run (DDPM-1000) FD at most {MAX_FLOOR_RATIO:.0f}x its real-data floor: {floor_ratio:.2f}x "
         f"(FD {fd_ddpm.value:.3g}, floor {fd_ddpm.floor:.3g})"),
    ]


def report(rows: Sequence[Row], run_dir: Path, train_seconds: float | None, total_seconds: float,
           machine: str, command: str) -> tuple[str, bool]:
    checks = verdicts(rows)
    trained = f"trained in {train_seconds / 60:.1f} min" if train_seconds is not None else "reused (--run-dir)"
    lines = [
        "# Sample quality against sampling cost: default run (issue 3)",
        "",
        f"{machine}",
        "",
        f"Run: `python run.py` (defaults), {trained}; scored: best EMA checkpoint (epoch {best_epoch(run_dir)}), "
        f"{rows[0].num_samples} samples per row from sampler seed 0, bf16 network. FD and KID on the shipped digit "
        "classifier's features against the training split, FD in chunks of 180 (= len(val)); floors: held-out "
        "real digits at the same sample count. ± is the standard error.",
        "",
        rows_table(rows, find_row(rows, "DDPM", 1000)),
        "",
        *(verdict(passed, text) for passed, text in checks),
        "",
        f"Benchmark wall time {total_seconds / 60:.1f} min. Reproduce: `{command}`",
        "",
    ]
    return "\n".join(lines), all(passed for passed, _ in checks)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, help="score this run instead of training the default run")
    parser.add_argument("--work-dir", type=Path, help="where runs and evaluations go (default: outputs/benchmarks/)")
    parser.add_argument("--output", type=Path, help="also write the markdown report here")
    parser.add_argument("--num-samples", type=int, help="samples per row (default: evaluator.num_samples, 500)")
    parser.add_argument("--threads", type=int, help="CPU threads per run (default: torch's; 1 on a busy machine)")
    args = parser.parse_args(argv)

    limit_threads(args.threads)
    start = time.perf_counter()
    machine = machine_line()
    work = (args.work_dir or default_work_dir("quality")).resolve()
    train_seconds = None
    run_dir = args.run_dir.resolve() if args.run_dir else work / "train"
    if args.run_dir is None:
        train_seconds = run_py([], run_dir)
    rows = score_default_run(run_dir, work, args.num_samples)
    text, passed = report(rows, run_dir, train_seconds, time.perf_counter() - start, machine,
                           reproduce_command(argv))
    write_report(text, args.output)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())

"""What every script under ``experiments/`` shares: its flags, launching ``run.py``, reading ``eval.json``, score
formatting, the description of the machine and writing results files.

Scripts run from the repository root as modules, so ``diffusion`` and ``experiments`` import as they are in this
checkout, without touching ``sys.path``::

    python -m experiments.benchmarks.speed --quick
    python -m experiments.benchmarks.quality --threads 1 --out experiments/benchmarks/quality_cpu.md
    python -m experiments.studies.schedules --budget small

Every script takes ``--out`` (where its results land), ``--threads`` (CPU threads of the script and of every
``run.py`` it launches) and ``--quick`` (toy sizes: proves the script works in seconds per ``run.py`` launch, most
of it start-up; the figures mean nothing); see :func:`add_common_flags`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import torch

from diffusion.storage import checkpoint
from diffusion.storage.file_manager import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CODE_PATHS = ("run.py", "diffusion", "conf")  # what a result depends on; results files do not count
LOG_TAIL_CHARS = 3000  # of a failed run's log, in the error message
# --quick's model and training: a 37k-parameter U-Net, 20 noise levels, batches of 512 (4 steps an epoch), fp32
# (bf16 is slower on tiny CPU convolutions), one epoch, 20 samples (divisible by the 10 classes of a class grid).
# About 10 s per run.py, most of it start-up.
QUICK_NUM_TIMESTEPS = 20
QUICK_SAMPLES = 20
QUICK_MODEL = ("model.base_channels=8", "model.num_res_blocks=1", f"method.num_timesteps={QUICK_NUM_TIMESTEPS}",
               "trainer.batch_size=512", "trainer.precision=fp32")
QUICK_RUN = (*QUICK_MODEL, "trainer.epochs=1", "trainer.progress=false", f"evaluator.num_samples={QUICK_SAMPLES}")


# ----------------------------------------------------------------------------------------------------
# Flags
# ----------------------------------------------------------------------------------------------------
def add_common_flags(parser: argparse.ArgumentParser, out_help: str, out: Path | None = None,
                     threads: int | None = None) -> argparse.ArgumentParser:
    """``--out``, ``--threads`` and ``--quick``, with the script's own defaults for the first two."""
    parser.add_argument("--out", type=Path, default=out, help=out_help)
    default = threads or "torch's"
    parser.add_argument(
        "--threads", type=non_negative_int, default=threads,
        help=f"CPU threads of this script and of every run.py it launches (OMP_NUM_THREADS; default: {default}; "
             "0: torch's default, one per core). 1 is fastest on cores other jobs keep busy: there, OpenMP threads "
             "spin-wait on one another at every operation")
    parser.add_argument("--quick", action="store_true",
                        help="toy sizes: proves the script works in seconds per run.py it launches; its figures mean "
                             "nothing, and it writes over no committed result")
    return parser


def add_work_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--work-dir`` (where a benchmark's runs go) and ``--reuse`` (keep the finished ones found there)."""
    parser.add_argument("--work-dir", type=Path, help="where runs and evaluations go (default: outputs/benchmarks/)")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the finished runs and evaluations an earlier invocation left in --work-dir")
    return parser


def parse_work_args(doc: str, argv: Sequence[str] | None) -> argparse.Namespace:
    """The flags of a benchmark that trains its own runs (common flags, ``--work-dir``, ``--reuse``), parsed, with
    the thread count applied: the description is the first paragraph of the script's ``doc``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    add_common_flags(parser, out_help="also write the markdown report here")
    add_work_flags(parser)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    return args


def parse_timing_args(doc: str, argv: Sequence[str] | None, rounds: int, quick_rounds: int = 2) -> argparse.Namespace:
    """The flags of a side-by-side timing (common flags, ``--rounds``), parsed, with the thread count applied and
    ``args.rounds`` filled in (``rounds``; ``quick_rounds`` with --quick): the description is the first paragraph of
    the script's ``doc``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    add_common_flags(parser, out_help="also write the markdown report here")
    parser.add_argument("--rounds", type=positive_int, default=None, help=f"interleaved rounds (default {rounds})")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    args.rounds = args.rounds or (quick_rounds if args.quick else rounds)
    return args


def parse_checkpoint_benchmark_args(description: str, trained: str, argv: Sequence[str] | None,
                                    budgets: Sequence[str] = ()) -> argparse.Namespace:
    """The options of a benchmark that trains ``trained`` (or takes ``--run-dir``) and scores its checkpoint;
    with ``budgets``, also ``--budget`` (the first is the default)."""
    parser = argparse.ArgumentParser(description=description)
    add_common_flags(parser, out_help="also write the markdown report here (--output: the same)")
    parser.add_argument("--output", dest="out", type=Path, help=argparse.SUPPRESS)  # its name before --out
    parser.add_argument("--run-dir", type=Path, help=f"score this run instead of training {trained}")
    parser.add_argument("--work-dir", type=Path, help="where runs and evaluations go (default: outputs/benchmarks/)")
    parser.add_argument("--num-samples", type=int, help="samples per row (default: evaluator.num_samples, 500)")
    if budgets:
        parser.add_argument("--budget", choices=budgets, default=budgets[0], help="how much to train (default: "
                            f"{budgets[0]}; see the script's settings)")
    return parser.parse_args(argv)


def non_negative_int(text: str) -> int:
    return _whole_number(text, minimum=0)


def positive_int(text: str) -> int:
    return _whole_number(text, minimum=1)


def _whole_number(text: str, minimum: int) -> int:
    """An argparse type: ``text`` as a whole number of at least ``minimum``."""
    if not text.isdigit() or int(text) < minimum:
        raise argparse.ArgumentTypeError(f"must be a whole number >= {minimum}, got {text!r}")
    return int(text)


def set_threads(threads: int | None) -> None:
    """This process, and every ``run.py`` launched from now on, use ``threads`` CPU threads (None or 0: torch's
    default). Measured beside five other jobs: a tiny 2-epoch run took 10 min with torch's 2 threads, 23 s with 1."""
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------------
# Launching run.py
# ----------------------------------------------------------------------------------------------------
def run_py_command(arguments: Sequence[str]) -> list[str]:
    """``python run.py <arguments>`` with this interpreter; run it from :data:`ROOT` with :func:`run_py_env`."""
    return [sys.executable, "run.py", *arguments]


def run_py_env() -> dict[str, str]:
    """This process's environment (``OMP_NUM_THREADS``: :func:`set_threads`) with this checkout first on
    ``PYTHONPATH``, so the child runs this tree's ``diffusion`` even where another copy is installed."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def shown_command(arguments: Sequence[str]) -> str:
    """The command as a user types it (``python run.py ...``), for logs and reports."""
    return shlex.join(["python", "run.py", *arguments])


def run_py(arguments: Sequence[str], log_path: Path) -> float:
    """Run ``python run.py <arguments>`` from the repository root, its output into ``log_path``; returns its wall
    seconds. Prints the command before and the time after.

    Raises:
        RuntimeError: run.py failed; the message holds the command and the end of its log.
    """
    shown = shown_command(arguments)
    print(f"$ {shown}", flush=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log_path.open("w") as log:
        result = subprocess.run(run_py_command(arguments), cwd=ROOT, env=run_py_env(), stdout=log,
                                stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        tail = log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        raise RuntimeError(f"run.py exited with {result.returncode}: {shown}\n(log: {log_path})\n{tail}")
    print(f"  done in {seconds:.0f} s (log: {shown_path(log_path)})", flush=True)
    return seconds


def run_into(overrides: Sequence[str], run_dir: Path) -> float:
    """:func:`run_py` of one run into ``run_dir`` (``hydra.run.dir``), logged to ``<run_dir>.log``."""
    return run_py([*overrides, f"hydra.run.dir={shown_path(run_dir)}"], run_dir.with_suffix(".log"))


def set_aside(run_dir: Path) -> None:
    """Move an earlier run in ``run_dir`` (one ``--reuse`` did not take, or a crashed one) to ``<name>_before_<n>``
    with its log, so a run can train into ``run_dir`` again and nothing is lost."""
    if not run_dir.exists():
        return
    n = 1
    while any(run_dir.with_name(f"{run_dir.name}_before_{n}{end}").exists() for end in ("", ".log")):
        n += 1
    kept = run_dir.with_name(f"{run_dir.name}_before_{n}")
    run_dir.rename(kept)
    log = run_dir.with_suffix(".log")
    if log.is_file():
        log.rename(kept.with_suffix(".log"))
    print(f"{run_dir} trains again; the earlier run is now {kept}")


def train_into(overrides: Sequence[str], run_dir: Path) -> float:
    """:func:`run_into` a training run, after :func:`set_aside` of what ``run_dir`` held (run.py refuses a folder
    that already holds a run)."""
    set_aside(run_dir)
    return run_into(overrides, run_dir)


def evaluate_checkpoint(run_dir: Path, directory: Path, label: str, overrides: Sequence[str],
                        spacing: str = "leading", num_samples: int | None = None) -> list[SamplerRow]:
    """Score ``run_dir``'s best checkpoint with ``python run.py task=evaluate <overrides>`` into ``directory``: one
    row per entry of ``evaluator.sampler_steps`` when the overrides set it, else one row for the sampler's own
    setting. ``num_samples`` overrides ``evaluator.num_samples`` (None: the evaluator's)."""
    count = [] if num_samples is None else [f"evaluator.num_samples={num_samples}"]
    run_into(["task=evaluate", f"run_dir={shown_path(run_dir)}", *overrides, *count], directory)
    return sampler_rows(directory, label, spacing)


def trained_run(args: argparse.Namespace, train_overrides: Sequence[str], name: str) -> tuple[Path, Path, str]:
    """The run a checkpoint benchmark scores: ``--run-dir``, or one trained now by ``python run.py
    <train_overrides>`` into ``<work dir>/train``. Returns it, the work directory and how it was made."""
    work = (args.work_dir or work_dir("benchmarks", name)).resolve()
    if args.run_dir is not None:
        return args.run_dir.resolve(), work, "reused (--run-dir)"
    run_dir = work / "train"
    seconds = run_into(train_overrides, run_dir)
    return run_dir, work, f"trained in {seconds / 60:.1f} min"


def best_epoch(run_dir: Path) -> int:
    """The epoch of ``run_dir``'s best checkpoint (the one ``task=evaluate`` scores)."""
    return checkpoint.epoch(load_checkpoint(run_dir / "checkpoints" / "best.pt"))


def shown_path(path: Path) -> str:
    """``path`` relative to the repository root where it lies inside it (what a reader can paste)."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def figure_path(args: argparse.Namespace, work: Path, name: str) -> Path:
    """Where a benchmark's figure goes: beside its report (``<out stem>_<name>``) with ``--out``, else in ``work``."""
    return args.out.with_name(f"{args.out.stem}_{name}") if args.out is not None else work / name


def work_dir(kind: str, name: str) -> Path:
    """A fresh ``outputs/<kind>/<name>-<time>/`` (git-ignored) for the runs of one script invocation."""
    return ROOT / "outputs" / kind / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"


def epoch_records(run_dir: Path) -> list[dict[str, Any]]:
    """The end-of-epoch records of ``<run_dir>/metrics.jsonl`` (those with ``epoch_seconds``), in order."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [record for record in (json.loads(line) for line in lines if line.strip()) if "epoch_seconds" in record]


def training_seconds(run_dir: Path) -> float:
    """Sum of the run's ``epoch_seconds``: its training time without start-up, sampling or scoring."""
    return sum(record["epoch_seconds"] for record in epoch_records(run_dir))


# ----------------------------------------------------------------------------------------------------
# Reading eval.json (diffusion.sweeps.report.read_eval keeps only the values; the scripts need floors and errors too)
# ----------------------------------------------------------------------------------------------------
class Score(NamedTuple):
    """One metric of ``eval.json``: its value, standard error (None if unknown) and real-data floor."""

    value: float
    std_error: float | None
    floor: float | None


def read_eval(run_dir: Path) -> dict[str, Any]:
    """``<run_dir>/eval.json`` as written: ``{metric: {value, floor, std_error}, num_samples, steps,
    seconds_per_sample, sampler_steps: [...]}``.

    Raises:
        FileNotFoundError: the run wrote no evaluation.
    """
    path = run_dir / "eval.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: did the run finish its evaluation? See its log")
    return json.loads(path.read_text())


def spread_score(payload: dict[str, Any], key: str = "fd") -> tuple[float, float, float | None]:
    """One metric of an ``eval.json`` payload as (value, spread, floor): the spread is the standard deviation over
    the evaluator's seed sets when it scored several, else the one set's standard error (0 when neither)."""
    entry = payload[key]
    spread = entry.get("std_over_seeds") or entry.get("std_error") or 0.0
    return float(entry["value"]), float(spread), entry.get("floor")


def eval_records(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per scored step count: the ``sampler_steps`` entries, or the top level when there are none."""
    return payload.get("sampler_steps") or [payload]


class SamplerRow(NamedTuple):
    """One scored sampler setting of one checkpoint: a record of ``eval.json``."""

    label: str  # the method: "DDPM", "DDIM", "DPM-Solver++(2M)"
    steps: int
    spacing: str
    num_samples: int
    scores: dict[str, Score]
    seconds_per_sample: float
    directory: Path  # where the eval.json (and samples.npz) is


def sampler_rows(directory: Path, label: str, spacing: str = "leading") -> list[SamplerRow]:
    """The records of ``<directory>/eval.json`` as rows, in the order written."""
    return [SamplerRow(label, r["steps"], spacing, r["num_samples"], scores_of(r), r["seconds_per_sample"], directory)
            for r in eval_records(read_eval(directory))]


def scores_of(record: dict[str, Any]) -> dict[str, Score]:
    """The metrics of one ``eval.json`` record (its top level, or an entry of its ``sampler_steps`` list)."""
    return {
        name: Score(math.nan if entry["value"] is None else float(entry["value"]), entry.get("std_error"),
                    entry.get("floor"))
        for name, entry in record.items()
        if isinstance(entry, dict) and "value" in entry
    }


# ----------------------------------------------------------------------------------------------------
# Formatting
# ----------------------------------------------------------------------------------------------------
def fmt(x: float | None, spec: str = ".3g") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def fmt_score(score: Score | None, spec: str = ".3g") -> str:
    """``1.63 ± 0.29``; ``n/a`` when missing."""
    if score is None:
        return "n/a"
    spread = f" ± {fmt(score.std_error, '.2g')}" if score.std_error is not None else ""
    return fmt(score.value, spec) + spread


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]


def pass_fail(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def checks_report(title: str, machine: Machine, method: str, table: Sequence[str],
                  checks: Sequence[tuple[bool, str]], seconds: float, command: str) -> tuple[str, bool]:
    """A benchmark's markdown report: title, machine, how it was measured, its table, ``- **PASS** <text>`` per
    check, wall time and the command that makes it again; and whether every check passed."""
    lines = [
        f"# {title}", "", machine.line(), "", method, "", *table, "",
        *(f"- **{pass_fail(passed)}** {text}" for passed, text in checks), "",
        f"Benchmark wall time {seconds / 60:.1f} min. Reproduce: `{command}`", "",
    ]
    return "\n".join(lines), all(passed for passed, _ in checks)


def finish_report(text: str, passed: bool, args: argparse.Namespace) -> int:
    """Print the report, write it to ``--out`` when given; the exit status (1: a check failed; --quick's toy run
    is not expected to pass)."""
    print("\n" + text)
    if args.out is not None:
        write_results(args.out, text)
    return 0 if passed or args.quick else 1


def finish_timing(args: argparse.Namespace, title: str, method: str, table: Sequence[str],
                  checks: Sequence[tuple[bool, str]], started: float, module: str, argv: Sequence[str] | None) -> int:
    """A side-by-side timing's end: its :func:`checks_report` on this machine's CPU (wall time since ``started``, a
    ``time.perf_counter()``; the command ``python -m <module> <argv>``), printed and written as :func:`finish_report`
    does; its exit status."""
    text, passed = checks_report(title, describe_machine(torch.device("cpu")), method, table, checks,
                                 time.perf_counter() - started, reproduce_command(module, argv))
    return finish_report(text, passed, args)


# ----------------------------------------------------------------------------------------------------
# The machine
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Machine:
    """What timings depend on; every results file states it."""

    processor: str
    cores: int
    bf16_features: str  # AVX-512 BF16 and AMX: what bf16 matmuls run on
    torch_version: str
    threads: int
    device: str
    date: str
    code: str  # commit, and whether the code differs from it
    load: tuple[float, float, float] | None  # 1, 5 and 15-minute load averages

    def markdown(self) -> str:
        """Three bullet lines (the benchmark's header)."""
        return (
            f"- machine: {self.processor}, {self.cores} cores ({self.bf16_features}); {self.device}\n"
            f"- torch {self.torch_version}, intra-op threads: {self.threads}, Python {platform.python_version()}\n"
            f"- date: {self.date}; code: {self.code}"
        )

    def line(self) -> str:
        """One line (the reports' header)."""
        load = ", ".join(f"{x:.1f}" for x in self.load) if self.load else "n/a"
        return (f"{self.date} · {self.processor}, {self.cores} cores ({self.bf16_features}); {self.device} · torch "
                f"{self.torch_version} ({self.threads} threads) · load average {load} (shared machine) · {self.code}")


def describe_machine(device: torch.device | None = None) -> Machine:
    """This machine now; ``device``: the one measured (None: the first GPU if there is one, else the CPU)."""
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return Machine(
        processor=cpu_model(),
        cores=os.cpu_count() or 0,
        bf16_features=bf16_features(),
        torch_version=torch.__version__,
        threads=torch.get_num_threads(),
        device=f"GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else "device cpu",
        date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        code=code_revision(),
        load=os.getloadavg() if hasattr(os, "getloadavg") else None,
    )


def load_average() -> float:
    """The 1-minute load average (other jobs share these cores); NaN where the system has none."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan


def code_revision() -> str:
    """``commit abc1234``, plus a note when the code (:data:`CODE_PATHS`) differs from it. Read-only: no index
    refresh, no lock."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              env=env, timeout=10)
        if head.returncode != 0:
            return "commit unknown (not a git checkout)"
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", *CODE_PATHS], cwd=ROOT, capture_output=True,
                               env=env, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "commit unknown (git did not answer)"
    return f"commit {head.stdout.strip()}" + (" + uncommitted changes" if dirty.returncode == 1 else "")


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def bf16_features() -> str:
    """Which bf16 matmul hardware the CPU reports: AVX-512 BF16 instructions and/or AMX tiles (Intel)."""
    cpuinfo = Path("/proc/cpuinfo")
    flags = set(cpuinfo.read_text().split()) if cpuinfo.is_file() else set()
    avx = "AVX-512 BF16: " + ("yes" if "avx512_bf16" in flags else "no")
    amx = "AMX: " + ("yes" if "amx_bf16" in flags else "no")
    return f"{avx}, {amx}; torch CPU capability {torch.backends.cpu.get_cpu_capability()}"


# ----------------------------------------------------------------------------------------------------
# Results files
# ----------------------------------------------------------------------------------------------------
def write_results(path: Path, text: str) -> Path:
    """Write ``text`` (ending in one newline) to ``path``, creating its folder; says where on stderr (stdout may
    be the results themselves)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n")
    print(f"wrote {shown_path(path)}", file=sys.stderr, flush=True)
    return path


def reproduce_command(module: str, argv: Sequence[str] | None = None) -> str:
    """``python -m <module> <argv>`` (default: this process's arguments): the line that makes the results again."""
    return shlex.join(["python", "-m", module, *(sys.argv[1:] if argv is None else argv)])

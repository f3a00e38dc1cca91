"""What each job of a sweep reached, read from the files it wrote: ``metrics.jsonl`` (per-epoch losses, elapsed
time), ``eval.json`` (evaluation metrics), ``overrides.yaml``, ``config.yaml`` (planned epochs), ``checkpoints/``
and the markers of a failed or pruned job."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from diffusion.loggers.file import METRICS_FILE
from diffusion.loggers.naming import VAL_LOSS
from diffusion.runtime.checks import ConfigError

RUN_FILES = ("config.yaml", "overrides.yaml", METRICS_FILE, "train.log")
FAILED_MARKERS = ("error.txt", "FAILED")  # a job that wrote one of these failed, whatever else it left
PRUNED_MARKER = "pruned.json"  # written by diffusion.sweeps.pruning when the search stopped the job early
STATUSES = ("completed", "pruned", "running", "failed")
RUNNING_WINDOW_S = 600.0  # an unfinished job whose logs changed this recently is still running
OBJECTIVE_PREFERENCE = ("fd", "fid")  # evaluation metrics that, when present, rank jobs before val loss
BEST_VAL_LOSS = "best_val_loss"
_BOOKKEEPING = ("hydra", "optuna_trial.")
LOG_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\]")


@dataclass
class JobResult:
    """What one job of a sweep reached. Losses are NaN when the job logged no epoch."""

    job: str
    overrides: list[str]
    status: str  # completed | pruned | failed | running
    epochs: int = 0
    final_train_loss: float = math.nan
    final_val_loss: float = math.nan
    best_epoch: int | None = None
    best_val_loss: float = math.nan
    metrics: dict[str, float] = field(default_factory=dict)  # eval.json values
    errors: dict[str, float] = field(default_factory=dict)  # their standard errors (seed sets or bootstrap)
    ratios: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # value / floor, 95% low, high
    beats_floor: dict[str, float] = field(default_factory=dict)  # flagged metrics: near-copy share (NaN: unknown)
    spreads: dict[str, tuple[float, float]] = field(default_factory=dict)  # evaluator.seeds: (std, min) over sets
    wall_time_s: float = math.nan
    val_curve: list[float] = field(default_factory=list)
    varying: list[str] = field(default_factory=list)  # overrides not shared by every job of the sweep

    def value(self, objective: str) -> float:
        return self.best_val_loss if objective == BEST_VAL_LOSS else self.metrics.get(objective, math.nan)


def find_jobs(sweep_dir: Path) -> list[Path]:
    """The job directories of a sweep, in job-number order (ConfigError for anything but a sweep directory)."""
    if not sweep_dir.is_dir():
        raise ConfigError(f"sweep dir {sweep_dir} does not exist or is not a directory")
    if _is_run_dir(sweep_dir):
        raise ConfigError(
            f"{sweep_dir} is a single run directory; diffusion.sweeps.report expects a sweep directory "
            "(outputs/multirun/<date>/<time>) that holds one directory per job"
        )
    jobs = [p for p in sweep_dir.iterdir() if _is_run_dir(p)]
    if jobs:
        return sorted(jobs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))
    sweeps = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir() and any(map(_is_run_dir, p.iterdir())))
    if sweeps:
        raise ConfigError(f"{sweep_dir} holds sweeps, not jobs; pass one of them: {', '.join(sweeps)}")
    raise ConfigError(f"{sweep_dir} holds no job directories (with config.yaml or metrics.jsonl); is it a sweep?")


def _is_run_dir(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in RUN_FILES)


def read_job(job_dir: Path, now: float | None = None) -> JobResult:
    epochs, times = epoch_records(job_dir)
    result = JobResult(job=job_dir.name, overrides=read_overrides(job_dir), status="running")
    if epochs:
        last = epochs[max(epochs)]
        result.epochs = max(epochs)
        result.final_train_loss = _as_float(last.get("train/loss"))
        result.final_val_loss = _as_float(last.get(VAL_LOSS))
        result.val_curve = [_as_float(epochs[e].get(VAL_LOSS)) for e in sorted(epochs)]
        finite = {e: float(r[VAL_LOSS]) for e, r in epochs.items() if _is_number(r.get(VAL_LOSS))}
        if finite:
            result.best_epoch = min(finite, key=finite.__getitem__)
            result.best_val_loss = finite[result.best_epoch]
    result.metrics = read_eval(job_dir)
    result.errors, result.ratios, result.beats_floor = read_eval_error_bars(job_dir)
    result.spreads = read_seed_spreads(job_dir)
    result.wall_time_s = wall_time(times) if times else log_wall_time(job_dir / "train.log")
    result.status = job_status(job_dir, result.epochs, now)
    return result


def epoch_records(job_dir: Path) -> tuple[dict[int, dict[str, Any]], list[float]]:
    """Per-epoch records of ``metrics.jsonl`` by epoch number (a resumed run's repeated epochs: the later record
    wins) and the elapsed-time field of every record."""
    rows = read_metrics_jsonl(job_dir / "metrics.jsonl")
    epochs = {int(r["epoch"]): r for r in rows if _is_number(r.get("epoch")) and VAL_LOSS in r}
    return epochs, [float(r["time"]) for r in rows if _is_number(r.get("time"))]


def read_metrics_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a killed job
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_overrides(job_dir: Path) -> list[str]:
    path = job_dir / "overrides.yaml"
    loaded = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    # hydra.* and the sweeper's ++optuna_trial.* (trial number, storage) say how the job ran, not what it ran.
    if not isinstance(loaded, list):
        return []
    return [str(o) for o in loaded if not str(o).lstrip("+").startswith(_BOOKKEEPING)]


def read_eval(job_dir: Path) -> dict[str, float]:
    """The metric values of ``eval.json`` (``{metric: {"value": v, "floor": f, ...}}``); its other top-level keys
    (``num_samples``, ``sampler``, ``steps``, ...) describe the evaluation and are left out."""
    path = job_dir / "eval.json"
    try:
        loaded = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}
    entries = loaded.items() if isinstance(loaded, dict) else ()
    return {
        str(name): float(entry["value"])
        for name, entry in entries
        if isinstance(entry, dict) and _is_number(entry.get("value"))
    }


def read_eval_error_bars(
    job_dir: Path,
) -> tuple[dict[str, float], dict[str, tuple[float, float, float]], dict[str, float]]:
    """From ``eval.json``: each metric's ``std_error``, its ``ratio`` to the floor with the 95% interval, and the
    metrics flagged ``beats_floor`` with their ``near_copies`` share (NaN when not measured)."""
    try:
        loaded = json.loads((job_dir / "eval.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}, {}, {}
    entries = [(str(n), e) for n, e in loaded.items() if isinstance(e, dict)] if isinstance(loaded, dict) else []
    errors = {name: float(e["std_error"]) for name, e in entries if _is_number(e.get("std_error"))}
    ratios = {
        name: (float(e["ratio"]), *map(_as_float, e["ratio_interval"]))
        for name, e in entries
        if _is_number(e.get("ratio")) and isinstance(e.get("ratio_interval"), list) and len(e["ratio_interval"]) == 2
    }
    flagged = {name: _as_float(e.get("near_copies")) for name, e in entries if e.get("beats_floor") is True}
    return errors, ratios, flagged


def read_seed_spreads(job_dir: Path) -> dict[str, tuple[float, float]]:
    """From an ``eval.json`` scored over ``evaluator.seeds``: each metric's ``std_over_seeds`` and
    ``min_over_seeds``; {} for a single sample set."""
    try:
        loaded = json.loads((job_dir / "eval.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    entries = [(str(n), e) for n, e in loaded.items() if isinstance(e, dict)] if isinstance(loaded, dict) else []
    return {name: (float(e["std_over_seeds"]), float(e["min_over_seeds"])) for name, e in entries
            if _is_number(e.get("std_over_seeds")) and _is_number(e.get("min_over_seeds"))}


def wall_time(times: Sequence[float]) -> float:
    """Seconds spent across sessions: the elapsed-time field restarts at each resume, so sum each run's maximum."""
    total, session_max, previous = 0.0, 0.0, -math.inf
    for t in times:
        if t < previous:
            total += session_max
            session_max = 0.0
        session_max, previous = max(session_max, t), t
    return total + session_max


def log_wall_time(path: Path) -> float:
    """From the first to the last timestamp of ``train.log`` (NaN without one)."""
    if not path.is_file():
        return math.nan
    stamps = [m.group(1) for m in map(LOG_TIME.match, path.read_text(encoding="utf-8").splitlines()) if m]
    if not stamps:
        return math.nan
    first, last = (datetime.strptime(s, "%Y-%m-%d %H:%M:%S") for s in (stamps[0], stamps[-1]))
    return (last - first).total_seconds()


def job_status(job_dir: Path, epochs_done: int, now: float | None = None) -> str:
    """``pruned``, ``failed`` (an error marker, or stopped before finishing), ``running`` (unfinished, logs changed in
    the last :data:`RUNNING_WINDOW_S`) or ``completed``."""
    if (job_dir / PRUNED_MARKER).exists():
        return "pruned"
    if any((job_dir / marker).exists() for marker in FAILED_MARKERS):
        return "failed"
    planned = planned_epochs(job_dir)
    finished = (job_dir / "checkpoints" / "last.pt").is_file() and (planned is None or epochs_done >= planned)
    if finished:
        return "completed"
    logs = [job_dir / name for name in ("metrics.jsonl", "train.log") if (job_dir / name).is_file()]
    latest = max((p.stat().st_mtime for p in logs), default=-math.inf)
    return "running" if (now if now is not None else time.time()) - latest < RUNNING_WINDOW_S else "failed"


def planned_epochs(job_dir: Path) -> int | None:
    path = job_dir / "config.yaml"
    config = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    epochs = config.get("trainer", {}).get("epochs") if isinstance(config, dict) else None
    return epochs if isinstance(epochs, int) else None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _as_float(value: Any) -> float:
    """A logged number as float; anything else (missing, null, a string) as NaN."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan

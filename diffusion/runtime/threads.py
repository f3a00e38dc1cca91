"""How many CPU threads a training process should use, and whether the machine is already busy.

PyTorch starts one thread per core of the node, so parallel jobs oversubscribe it and each runs slower than alone.
``num_threads=auto`` divides the CPUs this process may use (affinity capped by the cgroup quota) among the
processes running at once on this node (torchrun's ``LOCAL_WORLD_SIZE`` times the launcher's parallel jobs).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from diffusion.runtime.checks import check_int

JOBS_ENV = "DIFFUSION_JOBS_PER_NODE"
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class ThreadBudget:
    threads: int
    reason: str  # one line to log: where the number comes from


def cpu_limit(cgroup_root: Path = CGROUP_ROOT) -> tuple[float, str]:
    """The CPUs this process may use and what limits them (affinity, or a cgroup quota below it)."""
    try:
        affinity = len(os.sched_getaffinity(0))
        cpus, source = float(affinity), f"{affinity} CPUs in this process's affinity"
    except AttributeError:  # not Linux
        count = os.cpu_count() or 1
        cpus, source = float(count), f"{count} CPUs"
    quota = cgroup_quota(cgroup_root)
    if quota is not None and quota < cpus:
        cpus, source = quota, f"a cgroup CPU quota of {quota:g} CPUs ({source})"
    return cpus, source


def cgroup_quota(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs the cgroup quota under ``root`` allows (v2 ``cpu.max``, else v1 ``cpu.cfs_quota_us``); None if unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    for v1 in (root / "cpu", root / "cpu,cpuacct"):
        try:
            quota_us = int((v1 / "cpu.cfs_quota_us").read_text())
            period_us = int((v1 / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return None if quota_us <= 0 else quota_us / period_us
    return None


def jobs_per_node(
    launcher: Mapping[str, Any] | None = None, environ: Mapping[str, str] = os.environ
) -> tuple[int, str]:
    """How many processes run at once on this node: torchrun ranks times the launcher's parallel jobs.

    ``launcher`` is the job's ``hydra.launcher`` config as a plain dict (its ``n_jobs`` for joblib; -1 means one
    job per CPU, counted as the CPUs here); ``$DIFFUSION_JOBS_PER_NODE`` overrides it.
    """
    ranks = int(environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    jobs, source = 1, ""
    if environ.get(JOBS_ENV):
        jobs, source = int(environ[JOBS_ENV]), f"${JOBS_ENV}={environ[JOBS_ENV]}"
    elif launcher and "joblib" in str(launcher.get("_target_", "")) and launcher.get("n_jobs") not in (None, 1):
        n_jobs = int(launcher["n_jobs"])
        jobs = n_jobs if n_jobs > 0 else max(1, (os.cpu_count() or 1) + 1 + n_jobs)  # joblib: -1 = all CPUs
        source = f"hydra.launcher.n_jobs={n_jobs}"
    parts = [s for s in (source, f"{ranks} torchrun ranks" if ranks > 1 else "") if s]
    return max(1, jobs) * max(1, ranks), " x ".join(parts) or "one process"


def thread_budget(
    setting: int | Literal["auto"] = "auto",
    launcher: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] = os.environ,
    cgroup_root: Path = CGROUP_ROOT,
) -> ThreadBudget:
    """The intra-op thread count for ``torch.set_num_threads`` and a line saying why.

    Raises:
        ConfigError: ``num_threads`` is neither ``auto`` nor a positive integer.
    """
    if setting != "auto":
        threads = check_int(setting, "num_threads", minimum=1)
        return ThreadBudget(threads, f"num_threads={threads}")
    if environ.get("OMP_NUM_THREADS", "").isdigit() and int(environ["OMP_NUM_THREADS"]) > 0:
        # The user's (or the launcher's) explicit OpenMP setting, which torch itself follows.
        threads = int(environ["OMP_NUM_THREADS"])
        return ThreadBudget(threads, f"num_threads=auto: {threads} threads from $OMP_NUM_THREADS")
    cpus, cpu_source = cpu_limit(cgroup_root)
    jobs, job_source = jobs_per_node(launcher, environ)
    threads = max(1, math.floor(cpus / jobs))
    shared = f"shared by {jobs} processes at once ({job_source})" if jobs > 1 else "one process on this node"
    return ThreadBudget(threads, f"num_threads=auto: {threads} threads, {cpu_source}, {shared}")


def busy_warning(cpus: float, threads: int, loadavg: str | None = None) -> str | None:
    """One warning line when other work already occupies the CPUs this process is about to use, else None.

    ``loadavg`` is the text of ``/proc/loadavg`` (read when None); it is host-wide, also inside a container.
    """
    if loadavg is None:
        try:
            loadavg = Path("/proc/loadavg").read_text()
        except OSError:
            return None
    fields = loadavg.split()
    load = float(fields[0])
    others = max(0, int(fields[3].split("/")[0]) - 1)
    busy = max(load, float(others))
    if busy + threads <= cpus + 0.5:
        return None
    return (
        f"the machine is busy before this run starts (load {load:.1f}, {others} other runnable processes, "
        f"{cpus:g} CPUs) and this run adds {threads} threads; expect slow steps, or set "
        f"num_threads={max(1, math.floor(cpus - busy))} (or run fewer jobs at once: hydra.launcher.n_jobs)"
    )

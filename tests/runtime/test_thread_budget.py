"""Thread budget: CPUs (affinity, cgroup v2/v1 quota) divided among the processes of a node; busy-machine check."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from diffusion.runtime.threads import busy_warning, cgroup_quota, jobs_per_node, thread_budget
from diffusion.runtime.checks import ConfigError

JOBLIB = {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 4}


@pytest.fixture
def sixteen_cpus(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))


def cgroup(tmp_path: Path, v2: str | None = None, v1: tuple[int, int] | None = None) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    if v2 is not None:
        (tmp_path / "cpu.max").write_text(v2 + "\n")
    if v1 is not None:
        (tmp_path / "cpu").mkdir()
        (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(f"{v1[0]}\n")
        (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(f"{v1[1]}\n")
    return tmp_path


def test_cgroup_v2_and_v1_quotas(tmp_path):
    assert cgroup_quota(cgroup(tmp_path / "a", v2="400000 100000")) == 4.0
    assert cgroup_quota(cgroup(tmp_path / "b", v2="max 100000")) is None
    assert cgroup_quota(cgroup(tmp_path / "c", v1=(250000, 100000))) == 2.5
    assert cgroup_quota(cgroup(tmp_path / "d", v1=(-1, 100000))) is None
    assert cgroup_quota(tmp_path / "none") is None


def test_alone_on_the_node_uses_every_cpu(sixteen_cpus, tmp_path):
    budget = thread_budget("auto", environ={}, cgroup_root=tmp_path)
    assert budget.threads == 16 and "16 CPUs in this process's affinity" in budget.reason


def test_joblib_jobs_and_torchrun_ranks_share_the_cpus(sixteen_cpus, tmp_path):
    budget = thread_budget("auto", launcher=JOBLIB, environ={}, cgroup_root=tmp_path)
    assert budget.threads == 4 and "hydra.launcher.n_jobs=4" in budget.reason
    budget = thread_budget("auto", launcher=JOBLIB, environ={"LOCAL_WORLD_SIZE": "2"}, cgroup_root=tmp_path)
    assert budget.threads == 2 and "2 torchrun ranks" in budget.reason and "\n" not in budget.reason
    assert jobs_per_node(None, {"DIFFUSION_JOBS_PER_NODE": "8"})[0] == 8
    assert jobs_per_node({**JOBLIB, "n_jobs": 1}, {}) == (1, "one process")


def test_quota_below_affinity_limits_and_never_below_one_thread(sixteen_cpus, tmp_path):
    root = cgroup(tmp_path, v2="150000 100000")  # docker --cpus=1.5
    budget = thread_budget("auto", environ={}, cgroup_root=root)
    assert budget.threads == 1 and "cgroup CPU quota of 1.5 CPUs" in budget.reason
    root = cgroup(tmp_path / "v1", v1=(800000, 100000))
    assert thread_budget("auto", launcher={**JOBLIB, "n_jobs": 32}, environ={}, cgroup_root=root).threads == 1


def test_explicit_setting_wins_and_is_checked(sixteen_cpus):
    assert thread_budget(3).threads == 3
    with pytest.raises(ConfigError, match="num_threads must be in"):
        thread_budget(0)
    with pytest.raises(ConfigError, match="num_threads must be an integer"):
        thread_budget("many")  # type: ignore[arg-type]


def test_busy_machine_warning_names_the_setting():
    assert busy_warning(16, 4, "0.50 0.40 0.30 2/300 1234") is None
    line = busy_warning(2, 2, "1.89 0.91 0.39 4/99 4420")
    assert line is not None and "num_threads=1" in line and "3 other runnable" in line and "\n" not in line
    assert busy_warning(2, 1, "0.9 0.9 0.9 1/99 1") is None


def test_auto_follows_an_explicit_omp_num_threads(tmp_path):
    budget = thread_budget("auto", launcher=JOBLIB, environ={"OMP_NUM_THREADS": "3"}, cgroup_root=tmp_path)
    assert budget.threads == 3 and "OMP_NUM_THREADS" in budget.reason
    assert thread_budget(2, environ={"OMP_NUM_THREADS": "3"}, cgroup_root=tmp_path).threads == 2  # a setting wins

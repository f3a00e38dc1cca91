"""The W&B logger, run offline only: what it sends is seen by a spy on ``wandb.init`` and the run's methods,
and the real offline W&B run behind it is checked for its files."""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from runs import ONE_EPOCH_MOONS, ROOT, main_in_process

from diffusion.loggers import FileLogger, LoggerCollection, MetricsFile, WandbLogger, open_logger
from diffusion.loggers.naming import (
    flatten_config,
    run_name_from_overrides,
    sweep_group,
)
from diffusion.runtime.checks import ConfigError
from diffusion.runtime.signals import Interrupted, stop_at_once

wandb = pytest.importorskip("wandb")
WANDB_ENV = ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR")


@pytest.fixture(scope="module", autouse=True)
def offline_wandb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every W&B directory inside this module's temp dir, offline mode, no key: nothing can leave the machine."""
    root = tmp_path_factory.mktemp("wandb_home")
    saved = {k: os.environ.get(k) for k in (*WANDB_ENV, "WANDB_MODE", "WANDB_SILENT", "WANDB_API_KEY")}
    for key in WANDB_ENV:
        os.environ[key] = str(root / key.lower())
    os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true")
    os.environ.pop("WANDB_API_KEY", None)
    yield root
    wandb.teardown()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@dataclass
class SeenRun:
    """What the logger asked of one W&B run: ``wandb.init``'s arguments, the logged rows (``_step`` added),
    artifact names, and the exit code it finished with, the run's config and summary at that moment."""

    init: dict[str, Any]
    run: Any = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    artifacts: list[str] = field(default_factory=list)
    exit_code: int | None = None
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> list[SeenRun]:
    """Each W&B run started during the test, in order; the real offline W&B still does all the work."""
    runs: list[SeenRun] = []
    init, log, finish, log_artifact = wandb.init, wandb.Run.log, wandb.Run.finish, wandb.Run.log_artifact

    def of(run: Any) -> SeenRun:
        return next(s for s in runs if s.run is run)

    def spy_init(**kwargs: Any) -> Any:
        runs.append(SeenRun(init=kwargs))
        runs[-1].run = init(**kwargs)
        return runs[-1].run

    def spy_log(self: Any, data: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
        of(self).rows.append({"_step": step, **data})
        log(self, data, step=step, **kwargs)

    def spy_finish(self: Any, exit_code: int | None = None, **kwargs: Any) -> None:
        record = of(self)
        record.exit_code, record.summary = exit_code, {k: self.summary.get(k) for k in self.summary.keys()}
        record.config = {k: v for k, v in self.config.items() if k != "_wandb"}
        finish(self, exit_code=exit_code, **kwargs)

    def spy_artifact(self: Any, artifact: Any, *args: Any, **kwargs: Any) -> Any:
        of(self).artifacts.append(artifact.name)
        return log_artifact(self, artifact, *args, **kwargs)

    monkeypatch.setattr(wandb, "init", spy_init)
    for name, spy in (("log", spy_log), ("finish", spy_finish), ("log_artifact", spy_artifact)):
        monkeypatch.setattr(wandb.Run, name, functools.wraps(getattr(wandb.Run, name))(spy))
    return runs


def offline_files(run_dir: Path) -> list[Path]:
    """The ``run-<id>.wandb`` files W&B wrote under ``<run_dir>/wandb/``, one per session, oldest first."""
    found = [p for p in (run_dir / "wandb").glob("*/run-*.wandb") if p.parent.name != "latest-run"]
    return sorted(found, key=lambda p: p.parent.name)


def test_offline_run_holds_config_metrics_image_and_summary(tmp_path: Path, seen: list[SeenRun]) -> None:
    png = tmp_path / "samples.png"
    Image.new("RGB", (8, 8), "white").save(png)
    run_dir = tmp_path / "run"
    logger = WandbLogger(run_dir, project="tests", name="method=ddim,schedule=cosine", group="sweep", tags=["a"])
    assert not run_dir.exists()  # nothing is written before the first log
    long_note = "x" * 40_000
    logger.log_hyperparams({"trainer": {"lr": 1e-4, "epochs": 2}, "method": {"_target_": "m.DDIM"}, "note": long_note})
    logger.log({"train/loss": 0.5, "val/loss": 0.4, "epoch": 1}, step=10)
    logger.log("a message goes to the console only")
    logger.log({"train/loss": 0.3, "val/loss": 0.2, "epoch": 2}, step=20)
    logger.log_image("samples", png, step=20)
    logger.log_summary({"best_val_loss": 0.2, "epochs": 2})
    run_id = logger.run_id
    logger.close()
    logger.close()  # idempotent

    (only,) = seen
    run = only.run
    assert [p.name for p in offline_files(run_dir)] == [f"run-{run_id}.wandb"]
    assert (run.id, run.project, run.name, run.group, list(run.tags)) == (
        run_id, "tests", "method=ddim,schedule=cosine", "sweep", ["a"],
    )  # fmt: skip
    assert only.config == {"trainer.lr": 1e-4, "trainer.epochs": 2, "method._target_": "m.DDIM", "note": long_note}
    rows = only.rows
    assert rows[0] == {"_step": 10, "train/loss": 0.5, "val/loss": 0.4, "epoch": 1}
    assert {k: rows[1][k] for k in ("_step", "train/loss", "val/loss", "epoch")} == {
        "_step": 20, "train/loss": 0.3, "val/loss": 0.2, "epoch": 2,
    }  # fmt: skip
    assert isinstance(rows[2]["samples"], wandb.Image) and rows[2]["_step"] == 20
    assert only.summary["best_val_loss"] == 0.2 and only.summary["epochs"] == 2
    assert only.exit_code == 0


def test_loggers_never_share_a_run(tmp_path: Path, seen: list[SeenRun]) -> None:
    first = WandbLogger(tmp_path / "a", project="tests")
    first.log({"a": 1.0}, step=1)
    first.close()
    second, third = WandbLogger(tmp_path / "b", project="tests"), WandbLogger(tmp_path / "c", project="tests")
    second.log({"b": 2.0}, step=1)
    third.log({"c": 3.0}, step=1)  # two open at once, as a buggy multirun would have
    second.close()
    third.close()
    assert all(s.init["reinit"] == "create_new" for s in seen)  # never the global wandb.run
    assert len({s.run.id for s in seen}) == 3
    assert [len(offline_files(tmp_path / name)) for name in "abc"] == [1, 1, 1]
    assert [s.rows for s in seen] == [[{"_step": 1, key: value}] for key, value in (("a", 1), ("b", 2), ("c", 3))]


def test_failed_job_marks_the_run_failed(tmp_path: Path, seen: list[SeenRun]) -> None:
    with pytest.raises(RuntimeError):
        with WandbLogger(tmp_path / "alone", project="tests") as logger:
            logger.log({"loss": 1.0}, step=1)
            raise RuntimeError("training diverged")
    assert seen[0].exit_code == 1
    both_dir = tmp_path / "both"
    with pytest.raises(RuntimeError):
        with LoggerCollection([FileLogger(both_dir, console=False), WandbLogger(both_dir, project="tests")]) as both:
            both.log({"loss": 1.0}, step=1)
            raise RuntimeError("out of memory")
    assert seen[1].exit_code == 1
    assert (both_dir / "metrics.jsonl").is_file()


def test_a_stop_signal_outside_the_loop_is_recorded_with_its_exit_code(tmp_path: Path, seen: list[SeenRun]) -> None:
    """SIGTERM in setup or teardown raises Interrupted at once (stop_at_once), through the logger's ``with`` before
    exit_on_failure turns it into exit 143: the W&B run records 143 as the process exits with, not 1."""
    with pytest.raises(Interrupted):
        with stop_at_once("stopped"), WandbLogger(tmp_path / "run", project="tests") as logger:
            logger.log({"loss": 1.0}, step=1)
            os.kill(os.getpid(), signal.SIGTERM)
    assert seen[0].exit_code == 143


def test_resumed_training_continues_the_same_run(tmp_path: Path, seen: list[SeenRun]) -> None:
    run_dir = tmp_path / "run"
    with WandbLogger(run_dir, project="tests") as first:
        first.log({"loss": 1.0}, step=5)
        run_id = first.run_id
    with WandbLogger(run_dir, project="tests", run_id=run_id) as resumed:
        resumed.log({"loss": 0.5}, step=9)
        assert resumed.run_id == run_id
    assert [(s.init["id"], s.init["resume"]) for s in seen] == [(None, None), (run_id, "allow")]
    assert [s.run.id for s in seen] == [run_id, run_id]  # `wandb sync` uploads both sessions into one run
    assert [p.parent.name.endswith(run_id) or run_id in p.parent.name for p in offline_files(run_dir)] == [True, True]
    assert [s.rows for s in seen] == [[{"_step": 5, "loss": 1}], [{"_step": 9, "loss": 0.5}]]


def test_checkpoints_become_an_artifact(tmp_path: Path, seen: list[SeenRun]) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    for name in ("last.pt", "best.pt"):
        (run_dir / "checkpoints" / name).write_bytes(b"weights")
    with WandbLogger(run_dir, project="tests", log_checkpoints=True) as logger:
        logger.log({"loss": 1.0}, step=1)
        run_id = logger.run_id
    assert seen[0].artifacts == [f"model-{run_id}"]


def test_missing_wandb_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` now raises ImportError
    with pytest.raises(ConfigError, match=r"logger=wandb .*pip install wandb"):
        WandbLogger(tmp_path, project="tests")
    disabled = WandbLogger(tmp_path / "off", mode="disabled")  # needs no wandb and writes nothing
    disabled.log({"loss": 1.0}, step=1)
    disabled.close()
    assert disabled.run_id is None and not (tmp_path / "off").exists()


@pytest.mark.parametrize(("key", "value"), [("mode", "cloud"), ("project", ""), ("tags", "a,b"), ("tags", ["x" * 65])])
def test_bad_settings_name_the_key(tmp_path: Path, key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=rf"^logger\.{key} "):
        WandbLogger(tmp_path, **{key: value})


def test_online_without_credentials_falls_back_to_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.warns(UserWarning, match="no W&B API key.*logging offline"):
        logger = WandbLogger(tmp_path, mode="online")
    assert logger.mode == "offline"
    monkeypatch.setenv("WANDB_MODE", "offline")  # the environment may only make a run more local
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert WandbLogger(tmp_path, mode="online").mode == "offline"


def test_logger_configs_compose_and_open_with_run_context(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        both = compose("config", overrides=["logger=both", "logger.loggers.wandb.group=mine"])
        single = compose("config", overrides=["logger=wandb"])
        plain = compose("config")
    context = {"name": "method=ddim", "group": "2024-05-01_12-00-00", "config": {"a": {"b": 1}}, "run_id": None}
    collection = open_logger(instantiate(both.logger), run_dir=tmp_path, **context)
    assert isinstance(collection, LoggerCollection)
    file_logger, wandb_logger = collection.loggers
    assert isinstance(file_logger, FileLogger) and isinstance(wandb_logger, WandbLogger)
    assert (wandb_logger.group, wandb_logger.name, wandb_logger.console) == ("mine", "method=ddim", False)
    # W&B alone gets a metrics.jsonl writer beside it: every run has the file the sweep report reads.
    alone = open_logger(instantiate(single.logger), run_dir=tmp_path, **context)
    assert isinstance(alone, LoggerCollection)
    metrics_file, wandb_alone = alone.loggers
    assert isinstance(metrics_file, MetricsFile) and isinstance(wandb_alone, WandbLogger)
    assert wandb_alone.group == "2024-05-01_12-00-00" and wandb_alone.mode == "offline"
    assert isinstance(open_logger(instantiate(plain.logger), run_dir=tmp_path, **context), FileLogger)
    assert not list(tmp_path.iterdir())  # building loggers writes nothing


def test_naming_helpers() -> None:
    nested = {"trainer": {"lr": 1e-4, "betas": (0.9, 0.99)}, "empty": {}, "seed": 0}
    assert flatten_config(nested) == {"trainer.lr": 1e-4, "trainer.betas": [0.9, 0.99], "empty": {}, "seed": 0}
    assert flatten_config({"a": {"b": 1}}, sep="/") == {"a/b": 1}
    overrides = ["method=ddim", "+schedule=cosine", "hydra.run.dir=x", "run_dir=y", "logger=wandb", "hydra/launcher=joblib"]
    assert run_name_from_overrides(overrides) == "method=ddim,schedule=cosine"
    assert run_name_from_overrides(["hydra.job.num=1", "resume=auto"]) is None
    assert sweep_group("outputs/multirun/2024-05-01/12-00-00") == "2024-05-01_12-00-00"
    long = [f"model.block_{i}.channels={i}" for i in range(8)] + ["trainer.lr=3e-4"]
    assert run_name_from_overrides(long) == ",".join(f"channels={i}" for i in range(8)) + ",lr=3e-4"
    very_long = run_name_from_overrides([f"k{i}=v{i}" for i in range(100)]) or ""
    assert len(very_long) <= 128 and very_long.startswith("k0=v0,") and very_long.endswith(",k99=v99")


def test_a_wandb_failure_is_a_warning_not_a_lost_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_init(**kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(wandb, "init", broken_init)
    logger = WandbLogger(tmp_path, project="tests")
    with pytest.warns(UserWarning, match="starting the offline W&B run failed.*disk full"):
        logger.log({"loss": 1.0}, step=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once; later calls are quiet no-ops
        logger.log({"loss": 0.5}, step=2)
        logger.log_summary({"best": 0.5})
        assert logger.run_id is None
        logger.close()


def test_a_run_logged_with_wandb_only_writes_metrics_jsonl_that_the_report_reads(tmp_path: Path) -> None:
    from diffusion.sweeps.job_results import read_job

    assert os.environ["WANDB_MODE"] == "offline"
    job = tmp_path / "sweep" / "0"
    (job / "checkpoints").mkdir(parents=True)
    (job / "checkpoints" / "last.pt").write_bytes(b"x")
    (job / "config.yaml").write_text("trainer:\n  epochs: 2\n")
    with open_logger(functools.partial(WandbLogger, project="tests"), run_dir=job) as logger:
        for epoch, val in ((1, 0.9), (2, 0.7)):
            logger.log({"epoch": epoch, "train/loss": val + 0.1, "val/loss": val}, step=10 * epoch)
    records = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["epoch"], r["val/loss"]) for r in records] == [(10, 1, 0.9), (20, 2, 0.7)]
    assert len(offline_files(job)) == 1
    result = read_job(job)
    assert (result.status, result.epochs, result.best_epoch, result.best_val_loss) == ("completed", 2, 2, 0.7)
    assert result.val_curve == [0.9, 0.7] and result.wall_time_s >= 0


def test_a_training_run_with_logger_wandb_writes_metrics_jsonl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = tmp_path / "run"
    overrides = [f"hydra.run.dir={run_dir}", *ONE_EPOCH_MOONS, "evaluator=none", "logger=wandb"]
    assert main_in_process(monkeypatch, *overrides) == 0
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("epoch") == 1 and "val/loss" in r for r in records)
    assert len(offline_files(run_dir)) == 1 and not (run_dir / "train.log").exists()

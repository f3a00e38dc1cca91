"""Pruning Optuna search on current Optuna: the per-epoch hook against a stored study, and the optuna
sweeper driving jobs (fake training curves, no model) through Hydra's launcher and the report."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna", minversion="3.0")

from diffusion.sweeps.report import main as report_main  # noqa: E402
from diffusion.sweeps.pruning import PRUNED_MARKER, TrialPruned, make_pruner, pruning_hook  # noqa: E402
from diffusion.runtime.checks import ConfigError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EPOCHS = 6


def curve(lr: float, epoch: int) -> float:
    """Validation loss of a fake run: falls with epochs at a rate set by the learning rate."""
    return 1.0 / (1.0 + 2000.0 * lr * epoch)


def states(database: Path) -> dict[int, str]:
    with sqlite3.connect(database) as connection:
        return dict(connection.execute("SELECT number, state FROM trials ORDER BY number").fetchall())


def test_hopeless_trial_is_pruned_and_marked_everywhere(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=storage)
    for lr in (1e-3, 2e-3, 3e-3):  # good trials, run to the end
        trial = study.ask()
        hook = pruning_hook(storage, "s", trial.number, make_pruner("median", n_startup_trials=2))
        for epoch in range(1, EPOCHS + 1):
            hook(epoch, {"val/loss": curve(lr, epoch)})
        study.tell(trial, curve(lr, EPOCHS))
    hopeless = study.ask()
    hook = pruning_hook(storage, "s", hopeless.number, make_pruner("median", n_startup_trials=2), run_dir=tmp_path)
    with pytest.raises(TrialPruned, match="pruned by the Optuna search at epoch 1: val/loss=0.98"):
        for epoch in range(1, EPOCHS + 1):
            hook(epoch, {"val/loss": curve(1e-5, epoch)})  # a learning rate far too small
    assert states(tmp_path / "optuna.db")[hopeless.number] == "PRUNED"  # told by the job itself
    assert json.loads((tmp_path / PRUNED_MARKER).read_text())["epoch"] == 1
    assert isinstance(TrialPruned("x"), optuna.TrialPruned)
    with pytest.raises(ConfigError, match="is PRUNED, not running"):
        pruning_hook(storage, "s", hopeless.number)


def test_hook_skips_missing_values_and_bad_settings_name_the_key(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask()
    hook = pruning_hook(storage, "s", trial.number, monitor="fd")
    hook(1, {"val/loss": 0.5})  # no fd this epoch: nothing reported
    hook(2, {"fd": float("nan")})
    assert study.trials[0].intermediate_values == {}
    with pytest.raises(ConfigError, match="optuna_trial.number=7: no such trial"):
        pruning_hook(storage, "s", 7)
    with pytest.raises(ConfigError, match="optuna_trial.pruner.name must be one of"):
        make_pruner("mediane")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="optuna_trial.pruner: median pruner refused"):
        make_pruner("median", n_startup_trial=3)


FAKE_APP = '''
import sys
import hydra
from omegaconf import DictConfig
from diffusion.sweeps.pruning import make_pruner, pruning_hook

sys.path.insert(0, {tests!r})
from test_pruning import EPOCHS, curve


@hydra.main(version_base="1.3", config_path=".", config_name="config")
def main(cfg: DictConfig) -> float:
    """Stands for run.py's train task: report each epoch's validation loss, let the hook stop a hopeless run."""
    from hydra.core.hydra_config import HydraConfig
    run_dir = HydraConfig.get().runtime.output_dir
    trial = cfg.optuna_trial
    hook = pruning_hook(trial.storage, trial.study_name, trial.number, make_pruner(**trial.pruner), run_dir=run_dir)
    for epoch in range(1, EPOCHS + 1):
        loss = curve(cfg.lr, epoch)
        with open(f"{{run_dir}}/metrics.jsonl", "a") as log:
            log.write('{{"epoch": %d, "val/loss": %r}}\\n' % (epoch, loss))
        hook(epoch, {{"val/loss": loss}})
    return loss


main()
'''

FAKE_CONFIG = """
defaults:
  - override hydra/sweeper: optuna
lr: 0.001
optuna_trial: {number: null, storage: null, study_name: null,
               pruner: {name: median, n_startup_trials: 3, n_warmup_steps: 1}}
hydra:
  sweep: {dir: SWEEP, subdir: "${hydra.job.num}"}
  sweeper:
    sampler: {_target_: optuna.samplers.RandomSampler, seed: 0}
    study_name: fake
    storage: sqlite:///SWEEP/optuna.db
    n_trials: 8
    params:
      lr: choice(3e-3, 2e-3, 1e-3, 1e-6)
"""


def run_fake_search(tmp_path: Path, sweep: Path, *overrides: str) -> subprocess.CompletedProcess:
    sweep.mkdir(parents=True, exist_ok=True)
    (tmp_path / "app.py").write_text(FAKE_APP.format(tests=str(Path(__file__).resolve().parent)))
    (tmp_path / "config.yaml").write_text(FAKE_CONFIG.replace("SWEEP", str(sweep)))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "1"}
    done = subprocess.run([sys.executable, "app.py", "-m", *overrides], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_sweeper_prunes_hopeless_jobs_and_the_report_says_so(tmp_path):
    sweep = tmp_path / "sweep"
    run_fake_search(tmp_path, sweep)
    stored = states(sweep / "optuna.db")
    assert len(stored) == 8 and "PRUNED" in stored.values() and "FAIL" not in stored.values(), stored
    study = optuna.load_study(study_name="fake", storage=f"sqlite:///{sweep / 'optuna.db'}")
    for trial in study.trials:
        job = sweep / str(trial.number)
        pruned = trial.state == optuna.trial.TrialState.PRUNED
        assert (job / PRUNED_MARKER).is_file() == pruned
        if pruned:  # stopped early: fewer epochs reported than planned
            assert max(trial.intermediate_values) < EPOCHS and trial.params["lr"] == 1e-6
        else:
            assert sorted(trial.intermediate_values) == list(range(1, EPOCHS + 1))
    results = (sweep / "optimization_results.yaml").read_text()
    assert "best_value" in results and "pruned:" in results
    assert report_main([str(sweep)]) == 0
    report = (sweep / "report.csv").read_text()
    assert report.count(",pruned,") == list(stored.values()).count("PRUNED")
    assert "optuna_trial" not in report  # bookkeeping overrides left out

    # A second sweep continues the stored study; its trials are numbered after the first sweep's.
    second = tmp_path / "second"
    run_fake_search(tmp_path, second, "hydra.sweeper.n_trials=2", f"hydra.sweeper.storage=sqlite:///{sweep}/optuna.db",
                    "hydra.sweeper.sampler.seed=1")
    assert sorted(states(sweep / "optuna.db")) == list(range(10))
    assert not (second / "optuna.db").exists()

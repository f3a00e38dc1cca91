"""Adding a method is its module and its yaml: a formulation defined in the tests directory, composed through a
config directory of its own (``hydra.searchpath``), trains one tiny epoch on the digits and samples with each
solver it lists; a solver it does not list is refused in one line naming ``sampler.solver``."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from runs import TINY_DIGITS, main_in_process
from test_toy_backbone import config_dir

TOY_VE = "_target_: toy_method.ToyVE\nsigma_min: 0.01\nsigma_max: 20.0\nnum_timesteps: 100\ndefault_solver: heun\n"
TINY = [o for o in TINY_DIGITS if not o.startswith(("method.", "evaluator."))] + ["trainer.epochs=1", "evaluator=none",
                                                                    "sampler.steps=4"]


@pytest.mark.parametrize("solver", [None, "euler"])
def test_a_method_module_and_its_yaml_train_and_sample(tmp_path, monkeypatch, solver):
    conf = config_dir(tmp_path, "method", "toy_ve", TOY_VE)
    run_dir = tmp_path / "run"
    chosen = [] if solver is None else [f"sampler.solver={solver}"]
    code = main_in_process(monkeypatch, f"hydra.searchpath=[file://{conf}]", "method=toy_ve",
                           f"hydra.run.dir={run_dir}", *TINY, *chosen)
    assert code == 0
    assert (run_dir / "checkpoints" / "best.pt").is_file() and (run_dir / "samples.npz").is_file()
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["method"]["_target_"] == "toy_method.ToyVE"
    samples = np.load(run_dir / "samples.npz")["samples"]
    assert samples.shape == (8, 1, 8, 8) and np.isfinite(samples).all()


def test_a_solver_the_method_does_not_list_is_refused(tmp_path, monkeypatch, capsys):
    conf = config_dir(tmp_path, "method", "toy_ve", TOY_VE)
    run_dir = tmp_path / "run"
    code = main_in_process(monkeypatch, f"hydra.searchpath=[file://{conf}]", "method=toy_ve",
                           f"hydra.run.dir={run_dir}", *TINY, "sampler.solver=ddim")
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sampler.solver=ddim" in err[0]
    assert not (run_dir / "checkpoints").exists()

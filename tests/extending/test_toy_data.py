"""Adding a data set is its module and its yaml: a ring of points defined in the tests directory, composed
through a config directory of its own (``hydra.searchpath``), trains one tiny epoch with the package's MLP,
which gets ``dim`` from the data; with no evaluator file of its own, nothing is scored."""

from __future__ import annotations

import numpy as np
import yaml
from runs import main_in_process
from test_toy_backbone import config_dir


def test_a_data_module_and_its_yaml_train_one_epoch(tmp_path, monkeypatch):
    conf = config_dir(tmp_path, "data", "ring", "_target_: toy_data.RingData\nnum_samples: 256\nseed: 0\n")
    run_dir = tmp_path / "run"
    code = main_in_process(monkeypatch, f"hydra.searchpath=[file://{conf}]", "data=ring", "model=mlp",
                           "model.hidden_dim=16", "model.num_layers=1", f"hydra.run.dir={run_dir}", "trainer=fast",
                           "trainer.epochs=1", "trainer.batch_size=64", "method.num_timesteps=20",
                           "sampler.num_samples=8")
    assert code == 0
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["model"]["dim"] == 2  # the point's size, asked of the data at build time
    assert saved["method"]["clip_denoised"] is False  # points are not confined to [-1, 1]
    with np.load(run_dir / "samples.npz") as samples:
        assert samples["samples"].shape == (8, 2)
    assert not (run_dir / "eval.json").exists()

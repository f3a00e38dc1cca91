"""Adding a backbone is its module and its yaml: a network defined in the tests directory, composed through a
config directory of its own (``hydra.searchpath``), trains one tiny epoch on the digits; the build gives it its
input channels from the data."""

from __future__ import annotations

from pathlib import Path

import yaml
from runs import main_in_process

TINY = ["trainer=fast", "trainer.epochs=1", "trainer.precision=fp32", "method.num_timesteps=20",
        "sampler.num_samples=8", "evaluator=none"]


def config_dir(tmp_path: Path, group: str, name: str, text: str) -> Path:
    """A search-path config directory holding ``<group>/<name>.yaml``."""
    folder = tmp_path / "conf" / group
    folder.mkdir(parents=True)
    (folder / f"{name}.yaml").write_text(text)
    return tmp_path / "conf"


def test_a_backbone_module_and_its_yaml_train_one_epoch(tmp_path, monkeypatch):
    conf = config_dir(tmp_path, "model", "toy_conv", "_target_: toy_backbone.ToyConvNet\nhidden: 8\nnum_classes: 0\n")
    run_dir = tmp_path / "run"
    code = main_in_process(monkeypatch, f"hydra.searchpath=[file://{conf}]", "model=toy_conv",
                           f"hydra.run.dir={run_dir}", *TINY)
    assert code == 0
    assert (run_dir / "checkpoints" / "best.pt").is_file() and (run_dir / "samples.npz").is_file()
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["model"]["_target_"] == "toy_backbone.ToyConvNet"
    assert saved["model"]["in_channels"] == 1  # the digits' channels, asked of the data at build time

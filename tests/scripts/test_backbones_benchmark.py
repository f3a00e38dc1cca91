"""The backbone benchmark's --reuse: a finished run is reused only when today's command composes its configuration;
another run trains beside the earlier one, which is kept."""

from __future__ import annotations

from pathlib import Path

import yaml
from omegaconf import OmegaConf

from experiments.benchmarks.backbones import MNIST, reusable_steps
from experiments.benchmarks.speed.training import compose_run_config
from experiments.lib import set_aside


def stored_run(run_dir: Path, overrides: list[str], steps: int) -> Path:
    """A run folder as run.py leaves it: the resolved config (with the data's shape filled in) and a score."""
    config = OmegaConf.to_container(compose_run_config(overrides), resolve=True)
    config["trainer"]["max_steps"], config["num_threads"] = steps, 1
    config["model"].update(in_channels=1, image_size=28)
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / "eval.json").write_text("{}")
    return run_dir


def test_reuse_needs_the_same_configuration_but_not_the_same_length(tmp_path: Path):
    uvit = [*MNIST.families["U-ViT"], *MNIST.shared]
    run = stored_run(tmp_path / "uvit", uvit, steps=2189)
    assert reusable_steps(run, uvit) == 2189  # another length and thread count, data-filled keys: still this run
    assert reusable_steps(run, [*uvit, "model.depth=9"]) is None
    assert reusable_steps(run, [*uvit, "trainer.lr=3e-3"]) is None
    assert reusable_steps(run, [*uvit, "evaluator.seeds=[0]"]) is None
    (run / "eval.json").unlink()
    assert reusable_steps(run, uvit) is None  # never scored


def test_a_family_that_trains_again_keeps_its_earlier_run_beside(tmp_path: Path):
    run = tmp_path / "uvit"
    for n in (1, 2):  # the second replacement finds the first one's name taken
        run.mkdir()
        (run / "eval.json").write_text(f'{{"run": {n}}}')
        run.with_suffix(".log").write_text(f"log {n}")
        set_aside(run)
        assert not run.exists() and not run.with_suffix(".log").exists()
        assert (tmp_path / f"uvit_before_{n}" / "eval.json").read_text() == f'{{"run": {n}}}'
        assert (tmp_path / f"uvit_before_{n}.log").read_text() == f"log {n}"
    set_aside(run)  # nothing there: nothing to move
    assert sorted(p.name for p in tmp_path.iterdir()) == ["uvit_before_1", "uvit_before_1.log", "uvit_before_2",
                                                          "uvit_before_2.log"]
    (tmp_path / "uvit_before_3.log").write_text("a stray log")  # a name taken by a log alone is taken too
    run.mkdir()
    run.with_suffix(".log").write_text("log 4")
    set_aside(run)
    assert (tmp_path / "uvit_before_3.log").read_text() == "a stray log"
    assert (tmp_path / "uvit_before_4.log").read_text() == "log 4" and (tmp_path / "uvit_before_4").is_dir()

"""REPA on latents through run.py: ``task=encode encode.features=digits`` stores the digit classifier's features
beside the latents, and a REPA run on them trains with no encoder forward; features of another encoder, or none,
are refused in one line naming the key."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from runs import main_in_process, tree_digest
from tiny_autoencoders import TINY_LATENT_DIT, save_tiny_vae

from diffusion.evaluation.patch_features import ClassifierPatchFeatures

REPA = [*(key for key in TINY_LATENT_DIT if not key.startswith("evaluator")), "evaluator=none", "trainer.max_steps=2",
        "method.repa.weight=0.5", "method.repa.encoder=digits", "method.repa.projector_dim=8"]


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    """Digits latents of a tiny VAE with the digit classifier's features, and a copy without features."""
    root = tmp_path_factory.mktemp("repa_latents")
    save_tiny_vae(root / "vae")
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert main_in_process(monkeypatch, f"hydra.run.dir={root / 'enc'}", "task=encode", "autoencoder=sd_vae",
                               f"autoencoder.weights={root / 'vae'}", "autoencoder.scale=measure",
                               "encode.features=digits", "encode.shard_size=1000", "trainer.progress=false") == 0
    plain = shutil.copytree(root / "enc", root / "plain")  # as encoded without encode.features
    manifest = json.loads((plain / "latents.json").read_text())
    (plain / "latents.json").write_text(json.dumps({**manifest, "features": None}))
    return root


def test_a_repa_run_on_latents_uses_the_stored_features_and_runs_no_encoder(encoded, tmp_path, monkeypatch):
    def refuse(self, images):
        raise AssertionError("the encoder ran during training")

    monkeypatch.setattr(ClassifierPatchFeatures, "forward", refuse)
    run_dir = tmp_path / "run"
    assert main_in_process(monkeypatch, f"hydra.run.dir={run_dir}", *REPA,
                           f"data.path={encoded / 'enc'}") == 0
    checkpoint = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    assert "trainable_state_dict" in checkpoint and (run_dir / "samples.npz").is_file()


@pytest.mark.parametrize(("folder", "overrides", "key"), [
    ("enc", ["method.repa.encoder=mnist"], "method.repa.encoder=mnist"),  # features of another encoder
    ("plain", [], "encode.features=digits"),  # latents without features
])
def test_features_that_do_not_fit_are_one_line_exit_2(encoded, tmp_path, monkeypatch, capsys, folder, overrides, key):
    before = tree_digest(encoded / folder)
    capsys.readouterr()
    code = main_in_process(monkeypatch, f"hydra.run.dir={tmp_path / 'new'}", *REPA, *overrides,
                           f"data.path={encoded / folder}")
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and key in lines[0], lines
    assert not (tmp_path / "new").exists() and tree_digest(encoded / folder) == before


@pytest.mark.parametrize(("overrides", "key"), [
    (["encode.features=inception"], "encode.features"),  # not a patch encoder
    (["encode.features=mnist"], "method.repa.resize"),  # 28x28 input, 8x8 digits
    (["encode.features=dinov2"], "method.repa.encoder_path"),  # no model folder
])
def test_encode_features_that_cannot_be_made_are_one_line_exit_2(encoded, tmp_path, monkeypatch, capsys, overrides,
                                                                 key):
    capsys.readouterr()
    code = main_in_process(monkeypatch, f"hydra.run.dir={tmp_path / 'new'}", "task=encode", "autoencoder=sd_vae",
                           f"autoencoder.weights={encoded / 'vae'}", "autoencoder.scale=measure", *overrides)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and key in lines[0], lines
    assert not (tmp_path / "new").exists()

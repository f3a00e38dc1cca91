"""The latent path through run.py: train an own autoencoder, encode digits, train a DiT on the latents, sample it
(decoded: every evaluator scores pixels); a latent run resumes bit for bit; users' mistakes are one line, exit 2."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from kill_resume import assert_same_run
from runs import main_in_process, tree_digest
from tiny_autoencoders import TINY_LATENT_DIT, TINY_OWN, save_tiny_vae

from diffusion.storage.atomic import sidecar


@pytest.fixture(scope="module")
def latent_path(tmp_path_factory):
    """An own autoencoder run, its digits latents and a DiT run on them (each a few steps)."""
    root = tmp_path_factory.mktemp("latent")
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert main_in_process(monkeypatch, f"hydra.run.dir={root / 'ae'}", *TINY_OWN) == 0
        assert main_in_process(monkeypatch, f"hydra.run.dir={root / 'enc'}", "task=encode", "autoencoder=own",
                               f"autoencoder.run_dir={root / 'ae'}", "encode.shard_size=600") == 0
        assert main_in_process(monkeypatch, f"hydra.run.dir={root / 'dit'}", *TINY_LATENT_DIT,
                               f"data.path={root / 'enc'}", "checkpoint.save_every_n_epochs=1",
                               "resume=auto") == 0  # fresh here; the resumed copy's config says the same
    return root


def test_the_autoencoder_reports_psnr_and_the_fd_of_its_reconstructions(latent_path):
    scores = json.loads((latent_path / "ae" / "eval.json").read_text())
    assert np.isfinite(scores["psnr"]["value"]) and "floor" in scores["fd"]


def test_a_latent_run_records_its_autoencoder_and_saves_decoded_samples(latent_path, monkeypatch):
    run = latent_path / "dit"
    config = (run / "config.yaml").read_text()
    assert f"run_dir: {latent_path / 'ae'}" in config and "in_channels: 2" in config  # the latents' shape
    assert np.load(run / "samples.npz")["samples"].shape == (8, 1, 8, 8)  # pixels, not latents
    assert "fd" in json.loads((run / "eval.json").read_text())
    out = latent_path / "sampled"
    assert main_in_process(monkeypatch, "task=sample", f"run_dir={run}", f"hydra.run.dir={out}",
                           "sampler.num_samples=8", "sampler.steps=2") == 0
    assert (out / "samples.npz").read_bytes() == (run / "samples.npz").read_bytes()  # same seeds, same images


def test_a_latent_run_resumes_bit_for_bit(latent_path, monkeypatch, tmp_path):
    reference = latent_path / "dit"
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("config.yaml", "overrides.yaml"):
        shutil.copy(reference / name, run / name)
    for name in ("last.pt", "epoch_0001.pt"):  # the run as a kill after its first epoch left it
        shutil.copy(reference / "checkpoints" / "epoch_0001.pt", run / "checkpoints" / name)
        shutil.copy(sidecar(reference / "checkpoints" / "epoch_0001.pt"), sidecar(run / "checkpoints" / name))
    shutil.copy(reference / "checkpoints" / "best.pt", run / "checkpoints" / "best.pt")
    shutil.copy(sidecar(reference / "checkpoints" / "best.pt"), sidecar(run / "checkpoints" / "best.pt"))
    assert main_in_process(monkeypatch, f"hydra.run.dir={run}", *TINY_LATENT_DIT,
                           f"data.path={latent_path / 'enc'}", "checkpoint.save_every_n_epochs=1",
                           "resume=auto") == 0
    assert_same_run(run, reference, "resumed after epoch 1")


@pytest.fixture(scope="module")
def strangers(latent_path, tmp_path_factory):
    """Another autoencoder's folder, and a copy of the latents with a damaged shard."""
    root = tmp_path_factory.mktemp("strangers")
    digest = save_tiny_vae(root / "vae")
    damaged = root / "damaged"
    shutil.copytree(latent_path / "enc", damaged)
    shard = damaged / "train_00000600.npz"
    shard.write_bytes(shard.read_bytes()[:-10])
    return {"vae": root / "vae", "digest": digest, "damaged": damaged, "enc": latent_path / "enc",
            "dit": latent_path / "dit"}


CASES = [
    (["task=encode", "autoencoder=sd_vae", "autoencoder.weights={tmp}/absent"], "autoencoder.weights="),
    (["task=encode", "autoencoder=sd_vae", "autoencoder.weights={vae}", "autoencoder.weights_sha256=00000000"],
     "autoencoder.weights_sha256"),
    (["task=encode", "autoencoder=own"], "autoencoder.run_dir"),
    (["task=encode"], "autoencoder=sd_vae"),
    (["data=latents", "model=dit"], "data.path"),
    (["data=latents", "data.path={enc}", "model=dit", "model.in_channels=1"], "model.in_channels"),
    (["data=latents", "data.path={damaged}", "model=dit", "trainer.progress=false"], "train_00000600.npz"),
    (["data=latents", "data.path={enc}", "model=dit", "autoencoder=sd_vae", "autoencoder.weights={vae}"],
     "autoencoder=sd_vae"),
    (["autoencoder=sd_vae", "autoencoder.weights={vae}"], "task=encode"),
    (["task=sample", "run_dir={dit}", "autoencoder=sd_vae", "autoencoder.weights={vae}"], "autoencoder=sd_vae"),
    (["task=train_autoencoder"], "autoencoder=own"),
]


@pytest.mark.parametrize(("case", "key"), CASES, ids=[" ".join(case) for case, _ in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(strangers, tmp_path, monkeypatch, capsys, case, key):
    new_dir = tmp_path / "new"
    before = tree_digest(strangers["enc"])
    capsys.readouterr()
    overrides = [item.format(tmp=tmp_path, **strangers) for item in case]
    code = main_in_process(monkeypatch, f"hydra.run.dir={new_dir}", *overrides)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and key in lines[0], lines
    assert not new_dir.exists() and tree_digest(strangers["enc"]) == before


def test_encoding_into_another_autoencoders_latents_is_refused(strangers, monkeypatch, capsys):
    before = tree_digest(strangers["enc"])
    capsys.readouterr()
    code = main_in_process(monkeypatch, f"hydra.run.dir={strangers['enc']}", "task=encode", "autoencoder=sd_vae",
                           f"autoencoder.weights={strangers['vae']}")
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "holds latents of another autoencoder" in lines[0], lines
    assert tree_digest(strangers["enc"]) == before


def test_the_mnist_presets_compose_and_build(latent_path):
    from hydra import compose, initialize_config_dir
    from runs import ROOT

    from diffusion.app import build

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        autoencoder = compose(config_name="config", overrides=["experiment=mnist_autoencoder"])
        latent = compose(config_name="config", overrides=["experiment=mnist_latent",
                                                          f"data.path={latent_path / 'enc'}"])
    assert autoencoder.task == "train_autoencoder" and autoencoder.autoencoder.name == "own"
    parts = build(latent)
    assert parts.data.sample_shape == (2, 4, 4) and parts.model.num_classes == 10
    assert parts.config["autoencoder"]["run_dir"] == str(latent_path / "ae")  # the latents' own

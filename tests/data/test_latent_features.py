"""``task=encode encode.features=<encoder>``: the REPA encoder's features stored beside the latents (checksummed,
continued after an interruption, added to a folder encoded without them), and ``data=latents`` giving each batch
the features of the very view (image or flip) its latent was drawn from."""

from __future__ import annotations

import json

import pytest
import torch
from runs import tree_digest
from tiny_autoencoders import FlippingImages, save_tiny_vae

from diffusion.autoencoders import load_pretrained
from diffusion.data.latents import FEATURES, LatentData, shard_path
from diffusion.evaluation.patch_features import encoder_identity, load_patch_encoder
from diffusion.runtime.checks import ConfigError
from diffusion.storage.atomic import sidecar
from diffusion.tasks.encode import EncodeSettings, FeatureEncoder, encode

DATA_CONFIG = {"_target_": "diffusion.data.DigitsData"}


@pytest.fixture(scope="module")
def vae(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vae")
    save_tiny_vae(folder)
    return load_pretrained(str(folder), scale="measure"), {"name": "sd_vae", "weights": str(folder)}


@pytest.fixture(scope="module")
def digits_features():
    encoder = load_patch_encoder("digits")
    return FeatureEncoder(encoder, encoder_identity("digits", encoder))


def encoded(vae, run_dir, features=None):
    autoencoder, config = vae
    return encode(autoencoder, FlippingImages(), config, DATA_CONFIG, EncodeSettings(run_dir, 4, 4, False, features),
                  log=lambda line: None)


def test_each_training_shard_gets_the_features_of_its_images_and_flips(vae, digits_features, tmp_path):
    run_dir = encoded(vae, tmp_path / "enc", digits_features)
    manifest = json.loads((run_dir / "latents.json").read_text())
    assert manifest["features"] == {**digits_features.identity, "resize": False, "shape": [64, 2, 2]}
    for start in (0, 4, 8):  # beside each training shard, checksummed; validation computes no REPA loss
        assert sidecar(shard_path(run_dir, "train", start, FEATURES)).is_file()
    assert not shard_path(run_dir, "val", 0, FEATURES).exists()
    latents = LatentData(str(run_dir), pixels=FlippingImages(), features=True)
    assert latents.random_batches  # the trainer seeds every batch: z ~ q(z | x) and the view are drawn, not the mean
    train = latents.load().train
    train[:, 1::2] = 0  # std = 0: each z is its view's posterior mean, so the drawn view shows
    images = FlippingImages().load().train
    views = torch.stack([digits_features(images), digits_features(images.flip(-1))], dim=1).float()  # (9, 2, 64, 2, 2)
    assert (views[:, 0] - views[:, 1]).flatten(1).abs().amax(1).min() > 0.01  # > the tolerance: views tell apart
    drawn = set()
    for seed in range(8):
        z = latents.prepare_batch(train, seed) / latents.scale + latents.shift  # (9, c, h, w)
        view = (z[:, None] - train[:, 0::2]).flatten(2).abs().amax(-1).argmin(-1)  # (9,): 0 image, 1 flip
        features = latents.loss_inputs(torch.arange(9), seed)["encoder_features"]
        torch.testing.assert_close(features, views[torch.arange(9), view], rtol=1e-3, atol=1e-3)  # float16, batched
        drawn |= set(view.tolist())
    assert drawn == {0, 1}


def test_a_folder_gains_features_and_an_interrupted_feature_encode_continues(vae, digits_features, tmp_path):
    reference = encoded(vae, tmp_path / "reference", digits_features)
    run_dir = encoded(vae, tmp_path / "run")  # latents alone
    kept = shard_path(run_dir, "train", 0).stat().st_mtime_ns
    encoded(vae, run_dir, digits_features)
    assert shard_path(run_dir, "train", 0).stat().st_mtime_ns == kept  # the latents are not encoded again
    shard_path(run_dir, "train", 4, FEATURES).unlink()  # as if killed before it
    with pytest.raises(ConfigError, match="train_00000004_features.npz is missing"):
        LatentData(str(run_dir), features=True).load()
    encoded(vae, run_dir, digits_features)
    assert tree_digest(run_dir) == tree_digest(reference)


@pytest.mark.parametrize("other", [None, "weights"])
def test_another_encoders_features_are_refused_naming_encode_features(vae, digits_features, tmp_path, other):
    run_dir = encoded(vae, tmp_path / "enc", digits_features)
    before = tree_digest(run_dir)
    stranger = None if other is None else FeatureEncoder(
        digits_features.encoder, {**digits_features.identity, "weights_sha256": "0" * 64})
    with pytest.raises(ConfigError, match="holds the features of encode.features=digits"):
        encoded(vae, run_dir, stranger)
    assert tree_digest(run_dir) == before

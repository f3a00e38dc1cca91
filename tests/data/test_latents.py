"""Latents: task=encode's shards (atomic, checksummed, continued after an interruption), and data=latents drawing
z = mean + std * eps (and flips) from the batch's seed."""

from __future__ import annotations

import json

import pytest
import torch
from runs import tree_digest
from tiny_autoencoders import FlippingImages, save_tiny_vae

from diffusion.autoencoders import load_pretrained
from diffusion.data import DigitsData
from diffusion.data.latents import LatentData, shard_path
from diffusion.runtime.checks import ConfigError
from diffusion.tasks.encode import EncodeSettings, encode

DIGITS_CONFIG = {"_target_": "diffusion.data.DigitsData"}


@pytest.fixture(scope="module")
def vae(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vae")
    save_tiny_vae(folder)
    return load_pretrained(str(folder), scale="measure"), {"_target_": "diffusion.autoencoders.load_pretrained",
                                                          "name": "sd_vae", "weights": str(folder)}


def encoded(vae, data, run_dir, shard_size=500):
    autoencoder, config = vae
    return encode(autoencoder, data, config, DIGITS_CONFIG, EncodeSettings(run_dir, 256, shard_size, False),
                  log=lambda line: None)


def test_latents_hold_the_posterior_and_draw_a_fresh_z_per_step(vae, tmp_path):
    data = DigitsData()
    run_dir = encoded(vae, data, tmp_path / "enc")
    latents = LatentData(str(run_dir), pixels=data)
    splits = latents.load()
    assert latents.sample_shape == (2, 8, 8) and latents.num_classes == 10 and latents.scored_data is data
    assert splits.train.shape == (1617, 2, 2, 8, 8) and splits.val.shape == (180, 2, 8, 8)
    assert torch.equal(splits.train_labels, data.load().train_labels)
    z = latents.prepare_batch(splits.train, 0)
    assert float(z.std()) == pytest.approx(1.0, abs=0.02)  # the scale is 1 / std of z over the training set
    batch = splits.train[:5]
    a, b, c = latents.prepare_batch(batch, 7), latents.prepare_batch(batch, 7), latents.prepare_batch(batch, 8)
    assert torch.equal(a, b) and not torch.equal(a, c)  # the step's seed decides eps
    eps = torch.randn((5, 2, 8, 8), generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, (batch[:, 0] + batch[:, 1] * eps) * latents.scale)
    torch.testing.assert_close(latents.prepare_batch(splits.val[:3]), splits.val[:3] * latents.scale)


def test_flipping_data_stores_the_flipped_posterior_and_draws_either(vae, tmp_path):
    autoencoder, _ = vae
    data = FlippingImages()
    latents = LatentData(str(encoded(vae, data, tmp_path / "enc", shard_size=4)), pixels=data)
    train = latents.load().train
    assert train.shape == (9, 4, 2, 8, 8)
    torch.testing.assert_close(train[:, 2], autoencoder.encode(data.load().train.flip(-1)).mean)
    draws = torch.stack([latents.prepare_batch(train, seed) for seed in range(20)])
    means = (train[:, [0, 2]] * latents.scale)  # (9, 2, c, h, w)
    nearest = (draws[:, :, None] - means[None]).flatten(3).norm(dim=-1).argmin(-1)
    assert set(nearest.unique().tolist()) == {0, 1}  # both views drawn


def test_an_interrupted_encode_continues_and_ends_as_an_uninterrupted_one(vae, tmp_path):
    data = DigitsData()
    reference = encoded(vae, data, tmp_path / "reference", shard_size=400)
    run_dir = tmp_path / "run"
    encoded(vae, data, run_dir, shard_size=400)
    shard_path(run_dir, "train", 800).unlink()  # as if killed before this shard; the scale is written last
    manifest = json.loads((run_dir / "latents.json").read_text())
    (run_dir / "latents.json").write_text(json.dumps({**manifest, "scale": None, "shift": None}))
    with pytest.raises(ConfigError, match="did not finish"):
        LatentData(str(run_dir))
    kept = shard_path(run_dir, "train", 0).stat().st_mtime_ns
    encoded(vae, data, run_dir, shard_size=400)
    assert shard_path(run_dir, "train", 0).stat().st_mtime_ns == kept  # intact shards are not encoded again
    assert tree_digest(run_dir) == tree_digest(reference)


def test_damaged_and_missing_shards_are_refused_naming_the_file(vae, tmp_path):
    run_dir = encoded(vae, DigitsData(), tmp_path / "enc", shard_size=1000)
    shard = shard_path(run_dir, "train", 1000)
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(ConfigError, match=f"{shard.name} is damaged"):
        LatentData(str(run_dir)).load()
    shard.unlink()
    with pytest.raises(ConfigError, match=f"{shard.name} is missing"):
        LatentData(str(run_dir)).load()


def test_encoding_into_another_autoencoders_latents_is_refused_and_writes_nothing(vae, tmp_path):
    run_dir = encoded(vae, DigitsData(), tmp_path / "enc", shard_size=1000)
    before = tree_digest(run_dir)
    other = tmp_path / "other"
    save_tiny_vae(other, seed=1)
    stranger = (load_pretrained(str(other), scale="measure"), {"name": "sd_vae", "weights": str(other)})
    with pytest.raises(ConfigError, match="latents.json holds latents of another autoencoder"):
        encoded(stranger, DigitsData(), run_dir, shard_size=1000)
    assert tree_digest(run_dir) == before


def test_data_latents_without_a_path_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.path"):
        LatentData(None)
    with pytest.raises(ConfigError, match=r"^data\.path="):
        LatentData(str(tmp_path))

"""Autoencoders: loading a diffusers folder (never a download, digest checked), the latent scale, encode/decode,
and the KL autoencoder's training loss."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_autoencoders import save_tiny_vae

from diffusion.autoencoders import AutoencoderLoss, LatentDecoder, autoencoder_kl, load_pretrained, measured_scale
from diffusion.runtime.checks import ConfigError


@pytest.fixture(scope="module")
def vae_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vae")
    return folder, save_tiny_vae(folder, scaling_factor=0.5, shift_factor=0.25)


def test_pretrained_takes_scale_and_shift_from_its_config_and_records_its_digest(vae_folder):
    folder, digest = vae_folder
    autoencoder = load_pretrained(str(folder), weights_sha256=digest[:12])
    assert (autoencoder.scale, autoencoder.shift) == (0.5, 0.25)
    assert autoencoder.digest == digest and autoencoder.identity["config"]["latent_channels"] == 2
    assert load_pretrained(str(folder), scale="measure").scale is None


def test_missing_folder_and_other_weights_are_refused_naming_the_key(vae_folder, tmp_path):
    folder, _ = vae_folder
    with pytest.raises(ConfigError, match=r"^autoencoder\.weights="):
        load_pretrained(str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match=r"^autoencoder\.weights_sha256=0000"):
        load_pretrained(str(folder), weights_sha256="0" * 64)


def test_decode_undoes_the_scale_and_shift_of_the_latents(vae_folder):
    folder, _ = vae_folder
    autoencoder = load_pretrained(str(folder))
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    posterior = autoencoder.encode(x)
    assert posterior.mean.shape == posterior.std.shape == (3, 2, 8, 8)
    assert autoencoder.latent_shape((1, 8, 8)) == (2, 8, 8)
    z = (posterior.mean - 0.25) * 0.5  # what a diffusion model trains on and samples
    direct = autoencoder.network.decode(posterior.mean).sample.clamp(-1, 1)
    decoder = LatentDecoder(autoencoder, (1, 8, 8), batch_size=2)
    torch.testing.assert_close(decoder(z), direct, atol=1e-5, rtol=1e-5)


def test_measured_scale_is_one_over_the_std_of_z():
    mean, std = torch.randn(4000, dtype=torch.float64) * 2 + 0.5, torch.rand(4000, dtype=torch.float64)
    # Var z = E[std^2] + Var(mean), with z = mean + std * eps
    expected = 1 / math.sqrt(float((std**2).mean() + mean.var(unbiased=False)))
    scale = measured_scale(float(mean.sum()), float((mean**2).sum()), float((std**2).sum()), 4000)
    assert scale == pytest.approx(expected, rel=1e-9)


def test_the_loss_is_reconstruction_plus_weighted_kl_and_validation_is_deterministic():
    torch.manual_seed(0)
    network = autoencoder_kl(1, 8, down_channels=(4, 4), latent_channels=2, norm_groups=2)
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    plain, weighted = AutoencoderLoss(0.0), AutoencoderLoss(1.0)
    fixed = {"t": torch.zeros(4, dtype=torch.long), "noise": torch.zeros_like(x)}
    a, b = plain.compute_loss(network, x, **fixed), weighted.compute_loss(network, x, **fixed)
    assert torch.equal(a, plain.compute_loss(network, x, **fixed))  # validation: the posterior mean
    posterior = network.encode(x).latent_dist
    kl = 0.5 * (posterior.mean**2 + posterior.var - 1 - posterior.logvar).flatten(1).sum(1).mean() / 64
    torch.testing.assert_close(b - a, kl)


def test_a_network_its_groups_cannot_divide_is_refused():
    with pytest.raises(ConfigError, match="autoencoder.network.down_channels"):
        autoencoder_kl(1, 8, down_channels=(6,), norm_groups=4)

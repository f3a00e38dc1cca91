"""The ADM suite's sample .npz: written as ADM's sampling script writes it, read back (and this project's
samples.npz too), and refused with one line naming the file when its layout, dtype or shape is wrong."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusion.runtime.checks import ConfigError
from diffusion.sampling.sampler import SampleResult, save_samples
from diffusion.storage.images import to_uint8
from diffusion.storage.sample_files import adm_file_name, read_sample_file, write_adm_npz


def test_written_as_adm_writes_it_and_read_back(tmp_path):
    samples = torch.rand(5, 3, 4, 6) * 2 - 1  # (N, C, H, W) in [-1, 1]
    labels = torch.tensor([0, 3, 1, 9, 2])
    path = write_adm_npz(tmp_path, samples, labels)
    assert path.name == adm_file_name(5, 4, 6, 3) == "samples_5x4x6x3.npz"
    with np.load(path) as archive:
        assert archive.files == ["arr_0", "arr_1"]  # np.savez(path, arr, label_arr), as ADM's image_sample.py
        images, stored_labels = archive["arr_0"], archive["arr_1"]
    assert images.dtype == np.uint8 and images.shape == (5, 4, 6, 3)  # N x H x W x C
    np.testing.assert_array_equal(images, to_uint8(samples).permute(0, 2, 3, 1).numpy())
    np.testing.assert_array_equal(stored_labels, labels.numpy())
    loaded = read_sample_file(path, (3, 4, 6))
    assert loaded.samples is None and len(loaded) == 5
    torch.testing.assert_close(loaded.images, to_uint8(samples))  # back to (N, C, H, W)
    torch.testing.assert_close(loaded.labels, labels)


def test_unconditional_file_has_arr_0_only(tmp_path):
    path = write_adm_npz(tmp_path, torch.zeros(2, 1, 8, 8))
    with np.load(path) as archive:
        assert archive.files == ["arr_0"]
    assert read_sample_file(path, (1, 8, 8)).labels is None


def test_save_samples_in_adm_format_replaces_samples_npz(tmp_path):
    result = SampleResult(torch.rand(4, 1, 8, 8) * 2 - 1, steps=3, labels=torch.tensor([1, 2, 3, 4]))
    written = save_samples(result, tmp_path, format="adm")
    assert written[0] == tmp_path / "samples_4x8x8x1.npz" and not (tmp_path / "samples.npz").exists()
    assert (tmp_path / "samples.png").is_file()


def test_this_projects_samples_npz_is_read_too(tmp_path):
    points = np.random.default_rng(0).normal(size=(6, 2)).astype(np.float32)
    np.savez(tmp_path / "samples.npz", samples=points)
    loaded = read_sample_file(tmp_path / "samples.npz", (2,))
    assert loaded.images is None
    np.testing.assert_array_equal(loaded.samples.numpy(), points)


BAD_FILES = {
    "float pixels": (lambda p: np.savez(p, np.zeros((4, 8, 8, 1), np.float32)), "dtype float32"),
    "channels first": (lambda p: np.savez(p, np.zeros((4, 1, 8, 8), np.uint8)), "N x 8 x 8 x 1"),
    "other size": (lambda p: np.savez(p, np.zeros((4, 16, 16, 1), np.uint8)), "N x 8 x 8 x 1"),
    "one image": (lambda p: np.savez(p, np.zeros((1, 8, 8, 1), np.uint8)), "N >= 2"),
    "three dimensions": (lambda p: np.savez(p, np.zeros((4, 8, 8), np.uint8)), "N x 8 x 8 x 1"),
    "labels too short": (lambda p: np.savez(p, np.zeros((4, 8, 8, 1), np.uint8), np.zeros(3, np.int64)), "arr_1"),
    "no known array": (lambda p: np.savez(p, images=np.zeros((4, 8, 8, 1), np.uint8)), "arr_0"),
    "not an npz": (lambda p: p.write_bytes(b"not a zip file"), "not a readable .npz"),
    "a bare .npy": (lambda p: np.save(open(p, "wb"), np.zeros((4, 8, 8, 1), np.uint8)), "not a readable .npz"),
    "integer samples": (lambda p: np.savez(p, samples=np.zeros((4, 1, 8, 8), np.int64)), "dtype int64"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_file_is_one_line_naming_it(tmp_path, case):
    make, expected = BAD_FILES[case]
    path = tmp_path / "foreign.npz"
    make(path)
    with pytest.raises(ConfigError) as raised:
        read_sample_file(path, (1, 8, 8))
    message = str(raised.value)
    assert len(message.splitlines()) == 1 and f"run_dir={path}" in message and expected in message, message


def test_adm_file_for_point_data_is_refused(tmp_path):
    path = write_adm_npz(tmp_path, torch.zeros(2, 1, 8, 8))
    with pytest.raises(ConfigError, match="holds images"):
        read_sample_file(path, (2,))

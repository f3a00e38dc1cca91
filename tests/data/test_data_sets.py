"""Data sets: shapes, ranges, labels, the seeded split, and a ConfigError naming the key for each bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits, make_moons, make_swiss_roll

from diffusion.data import (
    BaseData,
    DataSplits,
    DigitsData,
    ImageFolderData,
    MoonsData,
    SwissRollData,
    train_val_indices,
)
from diffusion.data.points import swiss_roll, two_moons
from diffusion.runtime.checks import ConfigError


def _all(splits: DataSplits) -> torch.Tensor:
    return torch.cat([splits.train, splits.val])


def _assert_image_splits(data: BaseData, num_items: int, val_fraction: float = 0.1) -> DataSplits:
    """Common checks for every image data set: shapes, dtype, range and split sizes."""
    splits = data.load()
    num_val = max(1, round(val_fraction * num_items))
    assert data.kind == "image"
    assert splits.train.shape == (num_items - num_val, *data.sample_shape)
    assert splits.val.shape == (num_val, *data.sample_shape)
    for x in (splits.train, splits.val):
        assert x.dtype == torch.float32
        assert x.min() >= -1.0 and x.max() <= 1.0
    return splits


# --- digits -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> DigitsData:
    return DigitsData()


def test_digits_shapes_range_and_classes(digits: DigitsData) -> None:
    splits = _assert_image_splits(digits, 1797)
    assert digits.sample_shape == (1, 8, 8) and digits.channels == 1 and digits.image_size == 8
    assert digits.num_classes == 10 and digits.class_names == [str(i) for i in range(10)]
    assert _all(splits).min() == -1.0 and _all(splits).max() == 1.0


def test_digits_pixels_and_labels_follow_the_split(digits: DigitsData) -> None:
    splits = digits.load()
    raw = load_digits()
    train_idx, val_idx = train_val_indices(1797, 0.1, 0)
    expected = torch.from_numpy(raw.images).float() / 16 * 2 - 1  # (N, 8, 8)
    torch.testing.assert_close(splits.val[:, 0], expected[val_idx])
    torch.testing.assert_close(splits.train[:, 0], expected[train_idx])
    assert torch.equal(splits.train_labels, torch.from_numpy(raw.target)[train_idx])
    assert torch.equal(splits.val_labels, torch.from_numpy(raw.target)[val_idx])
    assert splits.train_labels.dtype == torch.long


def test_digits_read_without_sklearn_datasets_are_load_digits_and_fall_back_to_it(monkeypatch) -> None:
    import numpy as np

    from diffusion.data import digits as digits_module

    raw = load_digits()
    images, targets = digits_module.sklearn_digits()  # scikit-learn's CSV read directly (no ~1 s import)
    assert np.array_equal(images, raw.images) and np.array_equal(targets, raw.target) and targets.dtype == np.int64
    monkeypatch.setattr(digits_module.importlib.util, "find_spec", lambda name: None)  # the file not found
    images, targets = digits_module.sklearn_digits()
    assert np.array_equal(images, raw.images) and np.array_equal(targets, raw.target)


def test_digits_resized_stays_in_range() -> None:
    data = DigitsData(image_size=16, val_fraction=0.2)
    splits = _assert_image_splits(data, 1797, val_fraction=0.2)
    assert data.sample_shape == (1, 16, 16) and splits.val_labels.shape == (len(splits.val),)


def test_digits_load_is_cached(digits: DigitsData) -> None:
    assert digits.load() is digits.load()


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [({"image_size": 0}, "data.image_size"), ({"val_fraction": 1.0}, "data.val_fraction"),
     ({"split_seed": 0.5}, "data.split_seed"), ({"channels": 3}, "data.channels")],
)
def test_digits_bad_arguments(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        DigitsData(**kwargs)


# --- split ------------------------------------------------------------------------------------------------


def test_split_is_disjoint_complete_and_seeded() -> None:
    train, val = train_val_indices(100, 0.25, seed=3)
    assert len(val) == 25 and len(train) == 75
    assert sorted(torch.cat([train, val]).tolist()) == list(range(100))
    again_train, again_val = train_val_indices(100, 0.25, seed=3)
    assert torch.equal(train, again_train) and torch.equal(val, again_val)
    assert not torch.equal(val, train_val_indices(100, 0.25, seed=4)[1])


def test_split_seed_changes_the_data_split() -> None:
    first = MoonsData(num_samples=200, split_seed=0).load()
    same = MoonsData(num_samples=200, split_seed=0).load()
    other = MoonsData(num_samples=200, split_seed=1).load()
    assert torch.equal(first.val, same.val)
    assert not torch.equal(first.val, other.val)
    # Same generated points either way: only the assignment to train/val moved.
    torch.testing.assert_close(_all(first).sort(dim=0).values, _all(other).sort(dim=0).values)


# --- points -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [MoonsData, SwissRollData])
def test_points_are_standardised_and_split(cls: type) -> None:
    data = cls(num_samples=1000)
    splits = data.load()
    assert data.kind == "points" and data.sample_shape == (2,)
    assert splits.train.shape == (900, 2) and splits.val.shape == (100, 2)
    assert splits.train.dtype == torch.float32
    points = _all(splits)
    torch.testing.assert_close(points.mean(dim=0), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(points.std(dim=0), torch.ones(2), atol=1e-5, rtol=0)


@pytest.mark.parametrize("cls", [MoonsData, SwissRollData])
def test_points_generation_seed(cls: type) -> None:
    first = cls(num_samples=300, seed=1).load()
    assert torch.equal(first.train, cls(num_samples=300, seed=1).load().train)
    assert not torch.equal(first.train, cls(num_samples=300, seed=2).load().train)


def test_moons_labels_and_swiss_roll_unlabelled() -> None:
    moons = MoonsData(num_samples=400)
    splits = moons.load()
    assert moons.num_classes == 2
    assert set(torch.cat([splits.train_labels, splits.val_labels]).tolist()) == {0, 1}
    assert splits.train_labels.shape == (360,)
    roll = SwissRollData(num_samples=400)
    assert roll.num_classes == 0 and roll.load().train_labels is None and roll.load().val_labels is None
    assert roll.noise == 0.25 and moons.noise == 0.05


@pytest.mark.parametrize(("num_samples", "noise", "seed"),
                         [(2, 0.0, 0), (7, 0.05, 3), (600, 0.05, 0), (1001, 0.3, 12), (8000, 0.25, 2**32 - 1)])
def test_points_are_scikit_learns_value_for_value(num_samples: int, noise: float, seed: int) -> None:
    """The moons and the roll are drawn here without importing sklearn.datasets, as scikit-learn draws them."""
    points, labels = two_moons(num_samples, noise, seed)
    expected_points, expected_labels = make_moons(n_samples=num_samples, noise=noise, random_state=seed)
    assert np.array_equal(points, expected_points) and points.dtype == expected_points.dtype
    assert np.array_equal(labels, expected_labels) and labels.dtype == expected_labels.dtype
    roll = swiss_roll(num_samples, noise, seed)
    expected_roll, _ = make_swiss_roll(n_samples=num_samples, noise=noise, random_state=seed)
    assert np.array_equal(roll, expected_roll) and roll.dtype == expected_roll.dtype


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [({"num_samples": 1}, "data.num_samples"), ({"noise": -0.1}, "data.noise"), ({"seed": -1}, "data.seed"),
     ({"val_fraction": 0.0}, "data.val_fraction"), ({"split_seed": "a"}, "data.split_seed")],
)
def test_points_bad_arguments(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        MoonsData(**kwargs)


# --- image folder -----------------------------------------------------------------------------------------


def _save(path: Path, color: tuple[int, int, int] | int, size: tuple[int, int], mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def test_flat_folder_mixed_formats(tmp_path: Path) -> None:
    for i in range(6):
        _save(tmp_path / f"rgb{i}.png", (200, 30 * i, 10), (20 + 5 * i, 16))
    _save(tmp_path / "gray.jpg", 90, (12, 40), mode="L")
    _save(tmp_path / "upper.JPEG", (0, 0, 255), (30, 30))
    (tmp_path / "notes.txt").write_text("not an image")
    for channels in (1, 3):
        data = ImageFolderData(str(tmp_path), image_size=8, channels=channels, val_fraction=0.25)
        splits = _assert_image_splits(data, 8, val_fraction=0.25)
        assert data.sample_shape == (channels, 8, 8)
        assert data.num_classes == 0 and splits.train_labels is None and splits.val_labels is None


def test_grayscale_file_read_as_rgb_has_equal_channels(tmp_path: Path) -> None:
    _save(tmp_path / "a.png", 64, (10, 10), mode="L")
    _save(tmp_path / "b.png", 192, (10, 10), mode="L")
    x = _all(ImageFolderData(tmp_path, image_size=10, val_fraction=0.5).load())  # (2, 3, 10, 10)
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
    torch.testing.assert_close(x.amin(dim=(1, 2, 3)).sort().values, torch.tensor([64, 192]) / 255 * 2 - 1)


@pytest.mark.parametrize("size", [(40, 20), (20, 40)])
def test_non_square_images_are_center_cropped(tmp_path: Path, size: tuple[int, int]) -> None:
    # Outer quarters of the long side red and blue, middle half green: the crop keeps only green.
    long_side = max(size)
    pixels = np.zeros((long_side, 3), dtype=np.uint8)
    pixels[: long_side // 4] = (255, 0, 0)
    pixels[long_side // 4 : 3 * long_side // 4] = (0, 255, 0)
    pixels[3 * long_side // 4 :] = (0, 0, 255)
    strip = np.broadcast_to(pixels[None], (min(size), long_side, 3))  # (short, long, 3)
    array = strip if size[0] > size[1] else strip.transpose(1, 0, 2)  # PIL size is (width, height)
    for name in ("a.png", "b.png"):
        Image.fromarray(np.ascontiguousarray(array)).save(tmp_path / name)
    x = _all(ImageFolderData(tmp_path, image_size=10, val_fraction=0.5).load())  # (2, 3, 10, 10)
    center = x[:, :, 3:7, 3:7]  # away from the crop's edges, where bicubic blends in the neighbours
    torch.testing.assert_close(center[:, 1], torch.ones_like(center[:, 1]), atol=0.02, rtol=0)
    assert center[:, 0].max() < -0.95 and center[:, 2].max() < -0.95
    assert x[:, 1].mean() > 0.5  # mostly green across the whole crop too


def test_class_subfolders_give_sorted_labels(tmp_path: Path) -> None:
    for i in range(4):
        _save(tmp_path / "dog" / f"{i}.png", (255, 255, 255), (12, 12))
        _save(tmp_path / "cat" / f"{i}.jpg", (0, 0, 0), (16, 12))
    (tmp_path / "empty").mkdir()
    data = ImageFolderData(tmp_path, image_size=6, channels=1, val_fraction=0.25)
    splits = _assert_image_splits(data, 8, val_fraction=0.25)
    assert data.class_names == ["cat", "dog"] and data.num_classes == 2
    for x, labels in ((splits.train, splits.train_labels), (splits.val, splits.val_labels)):
        # cat (label 0) images are black, dog (label 1) white.
        assert torch.equal((x.mean(dim=(1, 2, 3)) > 0).long(), labels)
    assert torch.cat([splits.train_labels, splits.val_labels]).bincount().tolist() == [4, 4]


def test_image_folder_split_is_seeded(tmp_path: Path) -> None:
    for i in range(10):
        _save(tmp_path / f"{i}.png", (25 * i, 0, 0), (8, 8))
    first = ImageFolderData(tmp_path, image_size=8, val_fraction=0.3, split_seed=0).load()
    again = ImageFolderData(tmp_path, image_size=8, val_fraction=0.3, split_seed=0).load()
    other = ImageFolderData(tmp_path, image_size=8, val_fraction=0.3, split_seed=5).load()
    assert torch.equal(first.val, again.val)
    assert not torch.equal(first.val, other.val)


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.root: directory '.*nowhere' does not exist"):
        ImageFolderData(tmp_path / "nowhere", image_size=8)


def test_root_without_images(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(ConfigError, match=r"data\.root.*\.png, \.jpg, \.jpeg"):
        ImageFolderData(tmp_path, image_size=8)


def test_loose_images_next_to_class_folders(tmp_path: Path) -> None:
    _save(tmp_path / "loose.png", (0, 0, 0), (8, 8))
    _save(tmp_path / "cat" / "0.png", (0, 0, 0), (8, 8))
    with pytest.raises(ConfigError, match=r"data\.root.*loose\.png.*class subfolder"):
        ImageFolderData(tmp_path, image_size=8)


def test_corrupt_file_named_at_load(tmp_path: Path) -> None:
    _save(tmp_path / "good.png", (0, 0, 0), (8, 8))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    data = ImageFolderData(tmp_path, image_size=8, val_fraction=0.5)  # listing files does not decode them
    with pytest.raises(ConfigError, match=r"broken\.png"):
        data.load()


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [({"channels": 2}, "data.channels"), ({"image_size": 0}, "data.image_size"),
     ({"extensions": ()}, "data.extensions"), ({"val_fraction": 2}, "data.val_fraction")],
)
def test_image_folder_bad_arguments(tmp_path: Path, kwargs: dict, key: str) -> None:
    _save(tmp_path / "a.png", (0, 0, 0), (8, 8))
    arguments = {"image_size": 8, **kwargs}
    with pytest.raises(ConfigError, match=key):
        ImageFolderData(tmp_path, **arguments)


def test_custom_extensions(tmp_path: Path) -> None:
    _save(tmp_path / "a.bmp", (0, 0, 0), (8, 8))
    _save(tmp_path / "b.bmp", (0, 0, 0), (8, 8))
    data = ImageFolderData(tmp_path, image_size=4, extensions=("BMP",), val_fraction=0.5)
    assert [p.name for p in data.files] == ["a.bmp", "b.bmp"]
    assert data.load().train.shape == (1, 3, 4, 4)


def test_image_folder_decodes_with_worker_processes(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (12, 20, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    serial = ImageFolderData(tmp_path, image_size=8, num_workers=0).load()
    parallel = ImageFolderData(tmp_path, image_size=8, num_workers=2).load()
    assert torch.equal(serial.train, parallel.train) and torch.equal(serial.val, parallel.val)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ConfigError, match="broken.png"):
        ImageFolderData(tmp_path, image_size=8, num_workers=2).load()

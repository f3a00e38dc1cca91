"""Output pictures: files exist, decode, and have the pixel sizes the docstrings promise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion.storage.images import (
    save_image_grid,
    save_loss_curve,
    save_scatter,
    save_trajectory_strip,
    to_uint8,
)


def test_to_uint8_maps_range_and_clips() -> None:
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0])
    assert to_uint8(x).tolist() == [0, 0, 128, 255, 255]
    assert to_uint8(torch.zeros(2, 1, 3, 3)).dtype == torch.uint8


@pytest.mark.parametrize(("nrow", "rows", "cols"), [(None, 3, 4), (5, 2, 5), (10, 1, 10)])
def test_grayscale_grid_size(tmp_path: Path, nrow: int | None, rows: int, cols: int) -> None:
    images = torch.rand(10, 1, 8, 8) * 2 - 1
    path = save_image_grid(images, tmp_path / "sub" / "grid.png", nrow=nrow)  # parent folder is created
    with Image.open(path) as image:
        assert image.mode == "L"
        assert image.size == ((cols * 9 + 1) * 4, (rows * 9 + 1) * 4)  # (width, height)


def test_rgb_grid_pixels(tmp_path: Path) -> None:
    images = -torch.ones(4, 3, 5, 7)  # black tiles
    images[0, 0] = 1.0  # first tile red
    path = save_image_grid(images, tmp_path / "grid.png", scale=2, padding=2)
    with Image.open(path) as image:
        pixels = np.asarray(image)
    assert pixels.shape == ((2 * 7 + 2) * 2, (2 * 9 + 2) * 2, 3)  # (H, W, C)
    assert pixels[0, 0].tolist() == [255, 255, 255]  # white padding
    assert pixels[4, 4].tolist() == [255, 0, 0]  # inside the first (red) tile
    assert pixels[-5, -5].tolist() == [0, 0, 0]  # inside the last (black) tile


def test_grid_rejects_bad_shape(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="images must be"):
        save_image_grid(torch.zeros(2, 2, 4, 4), tmp_path / "grid.png")


def test_trajectory_strip_size(tmp_path: Path) -> None:
    frames = [torch.rand(3, 1, 8, 8) * 2 - 1 for _ in range(5)]
    timesteps = [999, 750, 500, 250, 0]
    labelled = save_trajectory_strip(frames, timesteps, tmp_path / "traj.png")
    plain = save_trajectory_strip(frames, timesteps, tmp_path / "plain.png", label_columns=False)
    with Image.open(plain) as image:
        assert image.size == ((5 * 9 + 1) * 4, (3 * 9 + 1) * 4)  # columns = timesteps, rows = samples
        plain_size = image.size
    with Image.open(labelled) as image:
        assert image.size[0] == plain_size[0] and image.size[1] > plain_size[1]


def test_trajectory_strip_needs_one_timestep_per_frame(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one timestep per frame"):
        save_trajectory_strip([torch.zeros(1, 1, 4, 4)], [10, 0], tmp_path / "traj.png")


def test_scatter_with_and_without_reference(tmp_path: Path) -> None:
    points = torch.randn(200, 2)
    for name, reference in (("alone.png", None), ("over.png", torch.randn(500, 2))):
        path = save_scatter(points, tmp_path / name, reference=reference, title="samples")
        with Image.open(path) as image:
            assert image.size == (400, 400)


def test_loss_curve(tmp_path: Path) -> None:
    path = save_loss_curve([1.0, 0.5, 0.25], [1.1, 0.6, 0.3], tmp_path / "loss.png")
    with Image.open(path) as image:
        assert image.size == (500, 350)
    # Zero loss cannot go on a log axis (falls back to linear); no validation yet is fine too.
    assert save_loss_curve([0.0, 1.0], [], tmp_path / "linear.png").exists()

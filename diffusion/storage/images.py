"""Pictures of results: image grids, 2-D scatter plots, denoising trajectories and loss curves.

Plots use a :class:`matplotlib.figure.Figure` with its own Agg canvas, never ``pyplot``: no display, no global state.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from einops import rearrange, repeat
from PIL import Image, ImageDraw

from diffusion.storage.atomic import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Grid padding is white, so tiles stay apart even when their background is black (digits are white-on-black).
_PAD_VALUE = 1.0
# Height in pixels of the strip above a trajectory that holds the column labels.
_LABEL_HEIGHT = 12
_FIGURE_DPI = 100


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Map values in ``[-1, 1]`` to ``0..255`` (out-of-range values are clipped); same shape, on the CPU."""
    return ((images.detach().cpu().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def save_image_grid(
    images: torch.Tensor,
    path: str | os.PathLike[str],
    nrow: int | None = None,
    scale: int = 4,
    padding: int = 1,
) -> Path:
    """Tile ``images`` ``(N, C, H, W)`` in ``[-1, 1]`` into one grayscale or RGB PNG: ``nrow`` per row (default a
    near-square grid), ``padding`` white pixels around tiles, upscaled ``scale`` times (nearest) so 8x8 digits show.
    """
    return _write_png(_grid_pixels(images, nrow, scale, padding), path)


def save_trajectory_strip(
    frames: Sequence[torch.Tensor],
    timesteps: Sequence[int],
    path: str | os.PathLike[str],
    scale: int = 4,
    label_columns: bool = True,
) -> Path:
    """One row per sample, one column per frame ``frames[j]`` = ``x_t`` ``(N, C, H, W)`` at ``t = timesteps[j]``;
    ``label_columns`` names each column's ``t`` above it (``x0`` for a negative ``t``, the sample).
    """
    if len(frames) != len(timesteps) or not frames:
        raise ValueError(f"need one timestep per frame, got {len(frames)} frames and {len(timesteps)} timesteps")
    if len({tuple(frame.shape) for frame in frames}) != 1:
        raise ValueError(f"frames must share one shape, got {sorted({tuple(f.shape) for f in frames})}")
    stacked = torch.stack([frame.detach().cpu() for frame in frames])  # (T, N, C, H, W)
    width = stacked.shape[-1]
    grid = _grid_pixels(rearrange(stacked, "t n c h w -> (n t) c h w"), len(frames), scale, padding=1)
    if label_columns:
        # Tile j spans one padding pixel then W image pixels, all upscaled: centre labels on the image part.
        labels = ["x0" if t < 0 else str(t) for t in timesteps]
        grid = _label_columns(grid, labels, tile_width=scale * (width + 1), first_center=scale * (1 + width / 2))
    return _write_png(grid, path)


def save_scatter(
    points: torch.Tensor,
    path: str | os.PathLike[str],
    reference: torch.Tensor | None = None,
    title: str | None = None,
) -> Path:
    """Scatter plot of ``points`` ``(N, 2)``, drawn over ``reference`` ``(M, 2)`` (the data) in light grey."""
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points must be (N, 2), got shape {tuple(points.shape)}")
    figure = _figure((4, 4))
    axes = figure.add_subplot()
    if reference is not None:
        ref = reference.detach().cpu().numpy()
        axes.scatter(ref[:, 0], ref[:, 1], s=2, c="lightgrey", label="data")
    pts = points.detach().cpu().numpy()
    axes.scatter(pts[:, 0], pts[:, 1], s=2, c="tab:blue", label="samples")
    axes.set_aspect("equal", adjustable="datalim")
    if reference is not None:
        axes.legend(loc="upper right", markerscale=4)
    if title:
        axes.set_title(title)
    return _write_figure(figure, path)


def save_loss_curve(
    train: Sequence[float],
    val: Sequence[float],
    path: str | os.PathLike[str],
    log_scale: bool = True,
) -> Path:
    """Train and validation loss per epoch (epochs count from 1); log y-axis when asked and all values > 0."""
    from matplotlib.ticker import MaxNLocator

    figure = _figure((5, 3.5))
    axes = figure.add_subplot()
    for name, losses in (("train", train), ("validation", val)):
        if len(losses):
            axes.plot(range(1, len(losses) + 1), losses, marker=".", label=name)
    # A log axis cannot show zero or negative values; fall back to linear rather than drop points.
    if log_scale and all(value > 0 for value in [*train, *val]):
        axes.set_yscale("log")
    axes.set_xlabel("epoch")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel("loss")
    if len(train) or len(val):
        axes.legend()
    return _write_figure(figure, path)


def save_curves(curves: dict[str, Sequence[tuple[float, float]]], path: str | os.PathLike[str],
                xlabel: str) -> Path:
    """One panel per named curve of ``(x, y)`` points (e.g. a score against the EMA length)."""
    figure = _figure((4 * max(1, len(curves)), 3.2))
    for index, (name, points) in enumerate(curves.items()):
        axes = figure.add_subplot(1, max(1, len(curves)), index + 1)
        axes.plot([x for x, _ in points], [y for _, y in points], marker="o")
        axes.set_xlabel(xlabel)
        axes.set_ylabel(name)
    return _write_figure(figure, path)


def _grid_pixels(images: torch.Tensor, nrow: int | None, scale: int, padding: int) -> np.ndarray:
    """Tiled, padded, upscaled uint8 pixels ``(rows * (H + p) + p) * scale, (nrow * (W + p) + p) * scale, C)``."""
    if images.ndim != 4 or images.shape[1] not in (1, 3) or len(images) == 0:
        raise ValueError(f"images must be (N, 1 or 3, H, W) with N > 0, got shape {tuple(images.shape)}")
    if scale < 1 or padding < 0 or (nrow is not None and nrow < 1):
        raise ValueError(f"need scale >= 1, padding >= 0, nrow >= 1; got {scale}, {padding}, {nrow}")
    num = len(images)
    nrow = nrow or math.ceil(math.sqrt(num))
    rows = math.ceil(num / nrow)
    x = images.detach().cpu().float()
    blank = torch.full((rows * nrow - num, *x.shape[1:]), _PAD_VALUE)  # fills the last row
    x = torch.cat([x, blank])  # (rows * nrow, C, H, W)
    # Pad each tile on its top and left; one more strip on the bottom and right closes the grid.
    x = torch.nn.functional.pad(x, (padding, 0, padding, 0), value=_PAD_VALUE)
    grid = rearrange(x, "(r n) c h w -> c (r h) (n w)", r=rows)
    grid = torch.nn.functional.pad(grid, (0, padding, 0, padding), value=_PAD_VALUE)
    grid = repeat(to_uint8(grid), "c h w -> (h sh) (w sw) c", sh=scale, sw=scale)
    return grid.numpy()


def _label_columns(grid: np.ndarray, labels: list[str], tile_width: int, first_center: float) -> np.ndarray:
    """Add a white strip above ``grid`` ``(H, W, C)`` with ``labels[j]`` centred at x = first_center + j * tile_width."""
    header = Image.new("L" if grid.shape[-1] == 1 else "RGB", (grid.shape[1], _LABEL_HEIGHT), "white")
    draw = ImageDraw.Draw(header)
    for column, text in enumerate(labels):
        draw.text((first_center + column * tile_width, 0), text, fill="black", anchor="ma")
    header_pixels = np.asarray(header, dtype=np.uint8).reshape(_LABEL_HEIGHT, grid.shape[1], -1)
    return np.concatenate([header_pixels, grid])  # (label height + H, W, C)


def _write_png(pixels: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Save uint8 ``(H, W, 1 or 3)`` pixels as a grayscale or RGB PNG, creating parent folders."""
    path = _prepared(path)
    # fromarray reads (H, W) uint8 as mode "L" and (H, W, 3) as "RGB".
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels)).save(buffer, "png")
    return atomic_write_bytes(path, buffer.getvalue())  # a failed write (full disk) keeps the previous picture


def _figure(size: tuple[float, float]) -> Figure:
    """A figure with its own Agg canvas. matplotlib is imported here, at the first plot, not with the module: its
    ~0.4 s would otherwise start every process, also those that draw nothing (a refused command, a summary)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _write_figure(figure: Figure, path: str | os.PathLike[str]) -> Path:
    path = _prepared(path)
    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=_FIGURE_DPI, format=path.suffix.lstrip(".") or "png")
    return atomic_write_bytes(path, buffer.getvalue())


def _prepared(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path

"""Sample files other tools read and write: the ADM evaluation suite's ``.npz`` (Dhariwal & Nichol 2021,
openai/guided-diffusion ``evaluations/evaluator.py``), which DiT, SiT, REPA and MeanFlow publish their numbers with.

Its layout, as ADM's ``scripts/image_sample.py`` saves it with ``np.savez(path, arr[, labels])``: ``arr_0`` holds
the images as uint8 ``(N, H, W, C)`` in 0..255 and, for a class-conditional model, ``arr_1`` the ``(N,)`` class
labels. This project's own ``samples.npz`` (``samples``: float32 ``(N, *sample_shape)`` in the data's range) is read
too, so any run's samples can be scored again.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from diffusion.runtime.checks import ConfigError
from diffusion.storage.atomic import atomic_write_bytes
from diffusion.storage.images import to_uint8

ADM_IMAGES = "arr_0"  # uint8 (N, H, W, C)
ADM_LABELS = "arr_1"  # (N,) integer class labels, class-conditional samples only
PROJECT_SAMPLES = "samples"  # this project's samples.npz: float32 (N, *sample_shape)
PROJECT_LABELS = "labels"


class SampleFile(NamedTuple):
    """Samples read from a file: ``images`` uint8 ``(N, C, H, W)`` (ADM) or ``samples`` float ``(N, *shape)`` in the
    data's range (this project's ``samples.npz``); exactly one is set. ``labels`` ``(N,)`` when the file has them."""

    images: torch.Tensor | None
    samples: torch.Tensor | None
    labels: torch.Tensor | None

    def __len__(self) -> int:
        return len(self.images if self.images is not None else self.samples)  # type: ignore[arg-type]


def adm_file_name(num_samples: int, height: int, width: int, channels: int) -> str:
    """``samples_50000x32x32x3.npz``: the name ADM's sampling script gives its output."""
    return f"samples_{num_samples}x{height}x{width}x{channels}.npz"


def write_adm_npz(directory: str | Path, samples: torch.Tensor, labels: torch.Tensor | None = None) -> Path:
    """Write ``samples`` ``(N, C, H, W)`` in ``[-1, 1]`` as the ADM suite's ``.npz`` into ``directory`` (atomically):
    ``arr_0`` uint8 ``(N, H, W, C)`` (rounded, as this project's PNGs), ``arr_1`` the labels when given."""
    if samples.ndim != 4:
        raise ValueError(f"the ADM format holds images (N, C, H, W), got samples of shape {tuple(samples.shape)}")
    pixels = to_uint8(samples).permute(0, 2, 3, 1).contiguous().numpy()  # (N, H, W, C)
    arrays = [pixels] if labels is None else [pixels, labels.cpu().numpy().astype(np.int64)]
    return _write_npz(Path(directory) / adm_file_name(*pixels.shape), *arrays)  # positional: arr_0, arr_1


def write_samples_npz(directory: str | Path, samples: torch.Tensor, labels: torch.Tensor | None = None) -> Path:
    """Write this project's ``samples.npz`` into ``directory`` (atomically): ``samples`` float32 in the data's
    range, ``labels`` when given."""
    arrays: dict[str, np.ndarray] = {"samples": samples.numpy().astype(np.float32)}
    if labels is not None:
        arrays["labels"] = labels.numpy()
    return _write_npz(Path(directory) / "samples.npz", **arrays)


def _write_npz(path: Path, *arrays: np.ndarray, **named: np.ndarray) -> Path:
    """``np.savez`` written atomically: a failed write (a full disk) keeps the previous file."""
    buffer = io.BytesIO()
    np.savez(buffer, *arrays, **named)
    return atomic_write_bytes(path, buffer.getvalue())


def read_sample_file(path: str | Path, sample_shape: tuple[int, ...]) -> SampleFile:
    """Read an ADM ``.npz`` (``arr_0``) or this project's ``samples.npz`` (``samples``) whose samples have the data's
    ``sample_shape`` (``(C, H, W)`` or ``(D,)``).

    Raises:
        ConfigError: naming ``run_dir=<path>`` for an unreadable file, neither layout, or the wrong dtype or shape.
    """
    path = Path(path)
    where = f"run_dir={path}"
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise ConfigError(f"{where}: not a readable .npz sample file ({type(error).__name__}: {error})") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):  # a bare .npy array: no named arrays to tell layouts apart
        raise ConfigError(f"{where}: not a readable .npz sample file (a single .npy array, not an .npz archive)")
    try:
        with loaded as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise ConfigError(f"{where}: not a readable .npz sample file ({type(error).__name__}: {error})") from None
    if ADM_IMAGES in arrays:
        return _adm_samples(where, arrays[ADM_IMAGES], arrays.get(ADM_LABELS), sample_shape)
    if PROJECT_SAMPLES in arrays:
        return _project_samples(where, arrays[PROJECT_SAMPLES], arrays.get(PROJECT_LABELS), sample_shape)
    raise ConfigError(f"{where}: holds {sorted(arrays) or 'no arrays'}; a sample file holds '{ADM_IMAGES}' (the ADM "
                      f"suite's uint8 N x H x W x C) or '{PROJECT_SAMPLES}' (this project's samples.npz)")


def _adm_samples(where: str, images: np.ndarray, labels: np.ndarray | None,
                 sample_shape: tuple[int, ...]) -> SampleFile:
    if len(sample_shape) != 3:
        raise ConfigError(f"{where}: an ADM file holds images, but the data's samples have shape {list(sample_shape)}; "
                          "choose image data (data=...) matching the file")
    channels, height, width = sample_shape
    if images.dtype != np.uint8:
        raise ConfigError(f"{where}: {ADM_IMAGES} must be uint8 pixels 0..255, got dtype {images.dtype}")
    if images.ndim != 4 or images.shape[1:] != (height, width, channels) or len(images) < 2:
        raise ConfigError(f"{where}: {ADM_IMAGES} must be N x {height} x {width} x {channels} (N >= 2, images as the "
                          f"data's, channels last), got shape {list(images.shape)}")
    tensor = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))  # (N, C, H, W)
    return SampleFile(tensor, None, _labels(where, ADM_LABELS, labels, len(images)))


def _project_samples(where: str, samples: np.ndarray, labels: np.ndarray | None,
                     sample_shape: tuple[int, ...]) -> SampleFile:
    if samples.dtype.kind != "f":
        raise ConfigError(f"{where}: {PROJECT_SAMPLES} must be floats in the data's range, got dtype {samples.dtype}")
    if samples.shape[1:] != tuple(sample_shape) or len(samples) < 2:
        raise ConfigError(f"{where}: {PROJECT_SAMPLES} must be N x {' x '.join(map(str, sample_shape))} (N >= 2, the "
                          f"data's sample shape), got shape {list(samples.shape)}")
    if not np.isfinite(samples).all():
        raise ConfigError(f"{where}: {PROJECT_SAMPLES} holds NaN or infinite values")
    tensor = torch.from_numpy(samples.astype(np.float32))
    return SampleFile(None, tensor, _labels(where, PROJECT_LABELS, labels, len(samples)))


def _labels(where: str, key: str, labels: np.ndarray | None, count: int) -> torch.Tensor | None:
    if labels is None:
        return None
    if labels.shape != (count,) or labels.dtype.kind not in "iu":
        raise ConfigError(f"{where}: {key} must hold {count} integer class labels, got {labels.dtype} "
                          f"of shape {list(labels.shape)}")
    return torch.from_numpy(labels.astype(np.int64))

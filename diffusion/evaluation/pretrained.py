"""Feature evaluators on pretrained vision networks read from disk: weights pinned by sha256, images as the
papers feed them, nothing ever downloaded.

A network here is a Hugging Face ``transformers`` model saved in its own layout (``config.json`` beside
``model.safetensors`` or ``pytorch_model.bin``), loaded with ``local_files_only=True``. Its weights file must match
``evaluator.weights_sha256``: a score from another file compares with no published number. Without the package or
the weights the evaluator scores nothing and says how to get them, as the Inception evaluator does.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from abc import abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Literal, Unpack

import torch
from torch import nn

from diffusion.data.base import BaseData
from diffusion.evaluation.evaluators import FeatureEvaluator, FeatureOptions
from diffusion.evaluation.floors import default_cache_dir, file_sha256
from diffusion.runtime.checks import ConfigError, check_choice, check_int
from diffusion.runtime.devices import resolve_device

log = logging.getLogger(__name__)

#: The files ``from_pretrained`` reads weights from, in the order it prefers them.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
Resize = int | Literal["auto"] | None


def default_weights_dir(name: str) -> Path:
    """Where a network's weights are looked for when ``evaluator.weights`` is null:
    ``$XDG_CACHE_HOME/diffusion/weights/<name>`` (``~/.cache/diffusion/weights/<name>`` by default)."""
    return default_cache_dir().parent / "weights" / name


def check_sha256_option(value: str | None, key: str = "evaluator.weights_sha256") -> str | None:
    """``value`` as lower-case hex (8 to 64 digits: a prefix of the digest is enough), or None; else ConfigError."""
    if value is None:
        return None
    digest = str(value).strip().lower()
    if not re.fullmatch(r"[0-9a-f]{8,64}", digest):
        raise ConfigError(f"{key}={value!r}: expected 8 to 64 hexadecimal digits of the weights file's sha256")
    return digest


def check_weights_sha256(path: Path, expected: str, key: str = "evaluator.weights_path") -> None:
    """Refuse (ConfigError naming ``key``) a weights file whose sha256 does not start with ``expected``."""
    actual = file_sha256(path)
    if not actual.startswith(expected):
        raise ConfigError(
            f"{key}={path}: sha256 {actual} is not the expected {expected} (a corrupt or different file: fetch it "
            "again, or set evaluator.weights_sha256 to the digest of the weights you mean to use)"
        )


def to_uint8_rgb(images: torch.Tensor) -> torch.Tensor:
    """Images ``(N, 1 or 3, H, W)`` in ``[-1, 1]`` as ``uint8`` RGB ``(N, 3, H, W)``, the pixels a saved PNG holds
    and the reference tools read (grey images repeated over the three channels)."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"image features need images (N, 1 or 3, H, W), got {tuple(images.shape)}")
    pixels = ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return pixels.expand(-1, 3, -1, -1) if pixels.shape[1] == 1 else pixels


def evaluator_device(device: str) -> torch.device:
    """``evaluator.device`` (auto, cpu or cuda) resolved; ConfigError naming it for cuda on a machine without."""
    check_choice(device, "evaluator.device", ("auto", "cpu", "cuda"))
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("evaluator.device=cuda but no CUDA device is available; use auto or cpu")
    return resolve_device(device, "evaluator.device")


def find_weights_file(weights: Path) -> Path | None:
    """The weights file of a saved model: ``weights`` itself when it is a file, else the first of
    :data:`WEIGHT_FILES` in the directory ``weights``; None when there is none.

    Raises:
        ConfigError: naming ``evaluator.weights``, for a file ``from_pretrained`` would not read or one without
            ``config.json`` beside it.
    """
    if weights.is_file():
        if weights.name not in WEIGHT_FILES:
            raise ConfigError(f"evaluator.weights={weights}: expected a directory saved by save_pretrained or its "
                              f"{' or '.join(WEIGHT_FILES)}")
        found: Path | None = weights
    else:
        found = next((weights / name for name in WEIGHT_FILES if (weights / name).is_file()), None)
    if found is not None and not (found.parent / "config.json").is_file():
        raise ConfigError(f"evaluator.weights={weights}: no config.json beside {found.name}; keep the files of the "
                          "downloaded model together in one directory")
    return found


class PretrainedFeatureEvaluator(FeatureEvaluator):
    """A :class:`FeatureEvaluator` whose rows are a pretrained network's features of the images, resized and
    normalised as the metric's paper does. Subclasses name the network (:attr:`NAME`, :meth:`_load`,
    :meth:`_forward`), its input statistics and its accepted sizes.
    """

    NAME: ClassVar[str]  # the evaluator's name in messages (evaluator=NAME)
    WEIGHTS_DIR: ClassVar[str]  # the default weights folder's name, the Hugging Face model's
    HF_MODEL: ClassVar[str]  # the Hugging Face model to download
    MEAN: ClassVar[tuple[float, float, float]]  # per-channel input statistics of the network's training
    STD: ClassVar[tuple[float, float, float]]
    ANTIALIAS: ClassVar[bool]  # the paper's bicubic resize antialiases (only a downscale differs)

    def __init__(
        self,
        weights: str | None = None,
        weights_sha256: str | None = None,
        resize: Resize = "auto",
        batch_size: int = 64,
        device: str = "cpu",
        **options: Unpack[FeatureOptions],
    ) -> None:
        super().__init__(**options)
        self.weights = Path(weights).expanduser() if weights else default_weights_dir(self.WEIGHTS_DIR)
        self.weights_sha256 = check_sha256_option(weights_sha256)
        if resize is not None and resize != "auto":
            check_int(resize, "evaluator.resize", minimum=1)
        self.resize = resize
        self.batch_size = check_int(batch_size, "evaluator.batch_size", minimum=1)
        self.device = evaluator_device(device)
        self._network: nn.Module | None = None
        self._size: int | None = None  # the side the images are resized to (None: as they come)

    @abstractmethod
    def _load(self, weights_file: Path) -> nn.Module:
        """The network saved beside ``weights_file``, from that file only (``local_files_only``)."""

    @abstractmethod
    def _forward(self, network: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        """Features ``(B, F)`` of normalised images ``(B, 3, S, S)``."""

    @abstractmethod
    def _input_size(self, network: nn.Module, side: int) -> int | None:
        """The side images of ``side`` pixels go in at under ``evaluator.resize``; ConfigError naming
        ``evaluator.resize`` when the network does not take them."""

    def unavailable(self) -> str | None:
        """``None`` when the network can be loaded here without a download, else one line saying what is missing
        and how to get it (reads no weights)."""
        if importlib.util.find_spec("transformers") is None:
            what = "transformers not installed: pip install -e '.[protocol]'"
        elif find_weights_file(self.weights) is None:
            what = f"no {' or '.join(WEIGHT_FILES)} in {self.weights}"
        else:
            return None
        return (f"evaluator={self.NAME}: not scored ({what}). To enable it, on a machine with internet: "
                f"huggingface-cli download {self.HF_MODEL} --local-dir {self.weights}, copy that directory here and "
                "set evaluator.weights_sha256 (docs/evaluation.md). Nothing is downloaded at run time; the run goes on "
                "without it.")

    def prepare(self, data: BaseData) -> None:
        """Check the weights (present, their sha256) and that the network takes the data's images; embed the
        reference and score the floor. Without the weights, log how to get them and score nothing from then on."""
        self._check_data(data)
        if self.unavailable_reason is None and self._network is None:
            self.unavailable_reason = self.unavailable()
            if self.unavailable_reason is not None:
                log.warning(self.unavailable_reason)
                return
            weights_file = find_weights_file(self.weights)
            assert weights_file is not None, "unavailable() found it"
            self._check_digest(weights_file)
            network = self._load(weights_file).eval().requires_grad_(False)
            self._size = self._input_size(network, int(data.sample_shape[-1]))
            self._network = network.to(self.device)
        if self.unavailable_reason is None:
            super().prepare(data)


    def _check_digest(self, weights_file: Path) -> None:
        if self.weights_sha256 is None:
            raise ConfigError(
                f"evaluator.weights_sha256 is null: pin {weights_file} by its digest, evaluator.weights_sha256="
                f"{file_sha256(weights_file)}, once it matches the sha256 the model page lists (docs/evaluation.md)")
        check_weights_sha256(weights_file, self.weights_sha256, key="evaluator.weights")

    def _check_data(self, data: BaseData) -> None:
        if data.kind != "image":
            raise ConfigError(f"evaluator={self.NAME} scores images, got {data.kind} data; use evaluator=points")

    def _pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Images in ``[-1, 1]`` as the network's input: uint8 RGB (what a saved sample holds), bicubic resize to
        the side the protocol uses, then ``(x / 255 - mean) / std``. ``(B, 3, S, S)`` float32."""
        pixels = to_uint8_rgb(images).float()
        if self._size is not None and pixels.shape[-1] != self._size:
            pixels = nn.functional.interpolate(pixels, size=(self._size, self._size), mode="bicubic",
                                               antialias=self.ANTIALIAS, align_corners=False)
        mean = torch.tensor(self.MEAN, dtype=pixels.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.STD, dtype=pixels.dtype).view(1, 3, 1, 1)
        return (pixels / 255 - mean) / std

    @torch.inference_mode()
    def _embed(self, samples: torch.Tensor) -> torch.Tensor:
        network = self._network
        assert network is not None, "prepare() loads the network before embedding"
        rows = [self._forward(network, self._pixels(batch).to(self.device)).double().cpu()
                for batch in samples.detach().cpu().split(self.batch_size)]
        return torch.cat(rows)  # (N, F)

    def _floor_key(self) -> dict[str, Any]:
        return {**super()._floor_key(), "network": self.weights_sha256, "input_size": self._size}


@contextmanager
def quiet_loading() -> Iterator[None]:
    """While entered, ``transformers`` shows no progress bars and only errors while a model loads: its notes on
    weights a vision tower leaves out (the text half of a whole CLIP checkpoint) would fill the run's log."""
    from transformers.utils import logging as transformers_logging

    verbosity = transformers_logging.get_verbosity()
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(verbosity)
        transformers_logging.enable_progress_bar()

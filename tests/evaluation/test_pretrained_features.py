"""FD_DINOv2 and CMMD on randomly initialised tiny stand-ins of DINOv2 and CLIP (saved with save_pretrained to
temporary folders: nothing is downloaded): scores with floors, the weights' sha256, the input sizes, the CMMD
estimator against a direct computation."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusion.data import DigitsData
from diffusion.evaluation.cmmd import CMMD_SCALE, CMMD_SIGMA, CMMDEvaluator, cmmd
from diffusion.evaluation.dinov2 import DINOv2Evaluator
from diffusion.evaluation.feature_stats import feature_statistics, save_feature_statistics
from diffusion.evaluation.metrics import mmd_rbf
from diffusion.runtime.checks import ConfigError

transformers = pytest.importorskip("transformers")

from tiny_networks import save_tiny_clip, save_tiny_dinov2  # noqa: E402

@pytest.fixture(scope="module")
def digits() -> DigitsData:
    return DigitsData()


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("dinov2")
    return folder, save_tiny_dinov2(folder)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("clip")
    return folder, save_tiny_clip(folder)


def _options(tmp_path: Path) -> dict:
    return {"num_samples": 32, "reference_size": 128, "floor_draws": 4, "bootstrap": 4,
            "floor_cache_dir": str(tmp_path / "floors"), "neighbour_metrics": False}


def _noise(count: int) -> torch.Tensor:
    return torch.rand(count, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1


# ------------------------------------------------------------------------------------------------------- DINOv2


def test_dinov2_scores_real_digits_near_their_floor_and_noise_far_above(tmp_path, digits, tiny_dinov2):
    folder, digest = tiny_dinov2
    evaluator = DINOv2Evaluator(weights=str(folder), weights_sha256=digest, resize=28,
                                **{**_options(tmp_path), "neighbour_metrics": True})
    evaluator.prepare(digits)
    real = evaluator.evaluate(digits.prepare_batch(digits.load().val[:32]))
    noise = evaluator.evaluate(_noise(32))
    assert set(real) == {"fd_dinov2", "precision", "recall", "memorization"} == set(evaluator.metric_names)
    fd = real["fd_dinov2"]
    assert fd.floor is not None and fd.std_error is not None and fd.floor_std is not None
    assert noise["fd_dinov2"].value > fd.value + 3 * fd.std_error


def test_dinov2_features_are_the_normed_cls_token_of_imagenet_normalised_pixels(tmp_path, digits, tiny_dinov2):
    folder, digest = tiny_dinov2
    evaluator = DINOv2Evaluator(weights=str(folder), weights_sha256=digest, resize=28, **_options(tmp_path))
    evaluator.prepare(digits)
    images = torch.rand(3, 3, 28, 28) * 2 - 1
    pixels = ((images + 1) * 127.5).round() / 255  # what a saved uint8 sample holds
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    network = transformers.Dinov2Model.from_pretrained(folder).eval()
    with torch.inference_mode():
        expected = network(pixel_values=(pixels - mean[:, None, None]) / std[:, None, None]).last_hidden_state[:, 0]
        assert torch.allclose(evaluator._embed(images), expected.double(), atol=1e-5)


def test_dinov2_reference_statistics_add_fd_against_the_file(tmp_path, digits, tiny_dinov2):
    folder, digest = tiny_dinov2
    first = DINOv2Evaluator(weights=str(folder), weights_sha256=digest, resize=28, **_options(tmp_path))
    first.prepare(digits)
    save_feature_statistics(tmp_path / "ref.npz", feature_statistics(first._prepared_reference()))
    evaluator = DINOv2Evaluator(weights=str(folder), weights_sha256=digest, resize=28,
                                reference_stats=str(tmp_path / "ref.npz"), **_options(tmp_path))
    evaluator.prepare(digits)
    real = evaluator.evaluate(digits.prepare_batch(digits.load().val[:32]))
    noise = evaluator.evaluate(_noise(32))
    assert real["fd_dinov2_reference"].floor is None
    assert noise["fd_dinov2_reference"].value > real["fd_dinov2_reference"].value
    np.savez(tmp_path / "wide.npz", mu=np.zeros(5), sigma=np.eye(5))
    wide = DINOv2Evaluator(weights=str(folder), weights_sha256=digest, resize=28,
                           reference_stats=str(tmp_path / "wide.npz"), **_options(tmp_path))
    with pytest.raises(ConfigError, match=r"^evaluator\.reference_stats holds 5-d"):
        wide.prepare(digits)


def test_dinov2_refuses_images_smaller_than_a_patch_without_resize(tmp_path, digits, tiny_dinov2):
    folder, digest = tiny_dinov2
    evaluator = DINOv2Evaluator(weights=str(folder), weights_sha256=digest, resize=None, **_options(tmp_path))
    with pytest.raises(ConfigError, match=r"^evaluator\.resize=null: the data's 8x8 images are smaller"):
        evaluator.prepare(digits)
    with pytest.raises(ConfigError, match=r"^evaluator\.resize"):
        DINOv2Evaluator(resize=0)


def test_weights_are_checked_by_sha256_before_loading(tmp_path, digits, tiny_dinov2, monkeypatch):
    folder, digest = tiny_dinov2
    loaded = []
    monkeypatch.setattr(DINOv2Evaluator, "_load", lambda self, path: loaded.append(path))
    wrong = DINOv2Evaluator(weights=str(folder / "model.safetensors"), weights_sha256="0" * 64)
    with pytest.raises(ConfigError) as error:
        wrong.prepare(digits)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"evaluator.weights={folder / 'model.safetensors'}: sha256")
    assert digest in message
    with pytest.raises(ConfigError, match=rf"^evaluator\.weights_sha256 is null: .*weights_sha256={digest}"):
        DINOv2Evaluator(weights=str(folder)).prepare(digits)
    assert loaded == []
    with pytest.raises(ConfigError, match=r"^evaluator\.weights_sha256='xyz'"):
        DINOv2Evaluator(weights_sha256="xyz")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"^evaluator\.weights=.*weights\.bin: expected a directory"):
        DINOv2Evaluator(weights=str(tmp_path / "weights.bin")).prepare(digits)


def test_without_weights_it_says_how_to_get_them_and_scores_nothing(tmp_path, digits, caplog, monkeypatch):
    evaluator = CMMDEvaluator(weights=str(tmp_path / "absent"), every_n_epochs=1)
    with caplog.at_level(logging.WARNING):
        evaluator.prepare(digits)
    message = caplog.records[-1].getMessage()
    assert "\n" not in message and "huggingface-cli download openai/clip-vit-large-patch14-336" in message
    assert evaluator.evaluate(_noise(4)) == {} and not evaluator.is_due(1)
    from diffusion.evaluation import pretrained

    monkeypatch.setattr(pretrained.importlib.util, "find_spec", lambda name: None)
    assert "transformers not installed: pip install -e '.[protocol]'" in DINOv2Evaluator().unavailable()


# --------------------------------------------------------------------------------------------------------- CMMD


def _direct_cmmd(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD^2 x 1000 pair by pair, straight from the definition."""
    def k(a: torch.Tensor, b: torch.Tensor) -> float:
        return math.exp(-float((a - b).square().sum()) / (2 * CMMD_SIGMA**2))

    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return CMMD_SCALE * (xx + yy - 2 * xy)


def test_cmmd_is_the_unbiased_rbf_mmd_scaled_by_1000():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(7, 5, generator=generator, dtype=torch.float64) * 6
    y = torch.randn(9, 5, generator=generator, dtype=torch.float64) * 6 + 2
    assert cmmd(x, y) == pytest.approx(_direct_cmmd(x, y), rel=1e-9)
    assert cmmd(x, y) == pytest.approx(CMMD_SCALE * mmd_rbf(x, y, bandwidth=CMMD_SIGMA), rel=1e-9)


def test_cmmd_of_two_halves_of_one_set_is_about_zero():
    generator = torch.Generator().manual_seed(0)
    points = torch.randn(800, 32, generator=generator, dtype=torch.float64)
    points = points / points.norm(dim=1, keepdim=True)  # unit vectors, as CLIP embeddings are
    shifted = points[400:] + 0.5 * torch.nn.functional.one_hot(torch.tensor(0), 32)
    shifted = shifted / shifted.norm(dim=1, keepdim=True)
    same, different = cmmd(points[:400], points[400:]), cmmd(points[:400], shifted)
    assert abs(same) < 0.02 * different and different > 0


def test_cmmd_evaluator_scores_with_floor_and_refuses_sizes_clip_does_not_take(tmp_path, digits, tiny_clip):
    folder, digest = tiny_clip
    evaluator = CMMDEvaluator(weights=str(folder), weights_sha256=digest[:12], **_options(tmp_path))
    evaluator.prepare(digits)
    real = evaluator.evaluate(digits.prepare_batch(digits.load().val[:32]))
    noise = evaluator.evaluate(_noise(32))
    assert set(real) == {"cmmd"} and real["cmmd"].floor is not None and real["cmmd"].std_error is not None
    assert noise["cmmd"].value > real["cmmd"].value + 3 * real["cmmd"].std_error
    images = torch.rand(3, 3, 28, 28) * 2 - 1
    pixels = ((images + 1) * 127.5).round() / 255
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None]
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None]
    with torch.inference_mode():
        whole = transformers.CLIPModel.from_pretrained(folder).eval()  # the checkpoint as downloaded
        expected = whole.get_image_features(pixel_values=(pixels - mean) / std)
        expected = getattr(expected, "pooler_output", expected)  # a tensor, or an output holding it
        expected = expected / expected.norm(dim=1, keepdim=True)
        assert torch.allclose(evaluator._embed(images), expected.double(), atol=1e-5)
    for resize, message in ((None, "=null leaves the data's 8x8 images"), (42, "=42: this CLIP takes 28x28")):
        other = CMMDEvaluator(weights=str(folder), weights_sha256=digest, resize=resize, **_options(tmp_path))
        with pytest.raises(ConfigError, match=rf"^evaluator\.resize{message}"):
            other.prepare(digits)


@pytest.mark.parametrize(("name", "kind"), [("dinov2", DINOv2Evaluator), ("cmmd", CMMDEvaluator)])
def test_evaluator_configs_compose_and_instantiate(name, kind):
    from hydra import compose, initialize_config_dir
    from diffusion.app.build import make_evaluator

    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[2] / "conf"), version_base=None):
        cfg = compose("config", overrides=[f"evaluator={name}", "trainer.device=cpu"])
    evaluator = make_evaluator(cfg.evaluator)
    assert isinstance(evaluator, kind) and evaluator.neighbour_metrics and evaluator.weights_sha256 is None

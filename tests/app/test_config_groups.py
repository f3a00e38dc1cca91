"""Every option of every config group composes and instantiates through the compose API."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from diffusion.app import build
from diffusion.app.build import make_evaluator
from diffusion.app.method_config import make_method
from diffusion.data import BaseData
from diffusion.evaluation import NoneEvaluator
from diffusion.storage.file_manager import FileManager
from diffusion.loggers import BaseLogger
from diffusion.methods import BaseMethod
from diffusion.sampling.sampler import Sampler
from diffusion.training.trainer import Trainer
from runs import compose_config

CONF = Path(__file__).resolve().parents[2] / "conf"
TINY_UNET = ["model.base_channels=16", "model.num_res_blocks=1", "model.num_groups=4"]


# Options that need an encoded latents folder or are not built by build(): tests/e2e/test_latent_runs.py builds them.
LATENT_OPTIONS = {"latents", "mnist_latent", "mnist_autoencoder"}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory) -> Path:
    """CIFAR-10 in its binary layout, two random records per batch file."""
    root = tmp_path_factory.mktemp("cifar")
    (root / "cifar-10-batches-bin").mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (root / "cifar-10-batches-bin" / f"{name}.bin").write_bytes(rng.integers(0, 10, (2, 3073), dtype=np.uint8).tobytes())
    return root


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(root / f"img{i}.png")
    return root


def test_every_group_has_its_options():
    assert set(options("method")) >= {"ddpm", "ddim"}
    assert set(options("schedule")) >= {"linear", "cosine", "sigmoid"}
    assert set(options("data")) >= {"digits", "moons", "swissroll", "image_folder"}
    assert set(options("model")) >= {"unet", "mlp"}
    assert set(options("trainer")) >= {"default", "fast"}
    assert set(options("logger")) >= {"file"}
    assert set(options("experiment")) >= {"moons_mlp", "digits_ddim_cosine"}


@pytest.mark.parametrize("method", options("method"))
@pytest.mark.parametrize("schedule", options("schedule"))
def test_method_alone_instantiates_ready(method, schedule):
    cfg = compose_config(f"method={method}", f"schedule={schedule}")
    built = make_method(cfg.method)  # its repa settings are the Trainer's wrapper's
    if method == "edm":  # sigma space: no betas; the forward process is x0 + sigma n
        x0 = torch.zeros(2, 1, 8, 8)
        assert torch.equal(built.q_sample(x0, torch.tensor([0.5, 2.0]), torch.ones_like(x0))[1], torch.full((1, 8, 8), 2.0))
        return
    if method in ("flow_matching", "meanflow", "shortcut"):  # flows: x_t = t x0 + (1 - t) n on the linear path
        x0 = torch.zeros(2, 1, 8, 8)
        assert torch.equal(built.q_sample(x0, torch.tensor([0.0, 0.25]), torch.ones_like(x0))[1], torch.full((1, 8, 8), 0.75))
        return
    if method == "scm":  # TrigFlow: x_t = cos(t) x0 + sin(t) sigma_d n
        x0 = torch.zeros(2, 1, 8, 8)
        assert torch.allclose(built.q_sample(x0, torch.tensor([0.0, math.pi / 2]), torch.ones_like(x0))[1],
                              torch.full((1, 8, 8), 0.5))
        return
    assert isinstance(built, BaseMethod)
    assert built.num_timesteps == 1000
    assert built.betas.shape == built.alphas_cumprod.shape == (1000,)
    x0 = torch.zeros(2, 1, 8, 8)
    x_t = built.q_sample(x0, torch.tensor([0, 999]), torch.ones_like(x0))
    assert x_t.shape == x0.shape


def test_schedule_choice_reaches_the_method():
    linear = make_method(compose_config("schedule=linear").method)
    cosine = make_method(compose_config("schedule=cosine").method)
    assert not torch.allclose(linear.alphas_cumprod, cosine.alphas_cumprod)


@pytest.mark.parametrize("data", [option for option in options("data") if option not in LATENT_OPTIONS])
def test_every_data_option_builds_with_its_model(data, image_root, cifar_root):
    model = "mlp" if data in ("moons", "swissroll") else "unet"
    overrides = [f"data={data}", f"model={model}", *(TINY_UNET if model == "unet" else [])]
    if data == "image_folder":
        overrides += [f"data.root={image_root}", "data.image_size=16"]
    if data == "cifar10":
        overrides += [f"data.root={cifar_root}"]
    parts = build(compose_config(*overrides))  # the network's input shape comes from the data
    dataset, net = parts.data, parts.model
    assert isinstance(dataset, BaseData)
    splits = dataset.load()
    assert splits.train.shape[1:] == dataset.sample_shape
    x = dataset.prepare_batch(splits.train[:3])  # uint8 data sets (mnist, cifar10) convert per batch
    assert net(x, torch.tensor([0, 5, 9])).shape == x.shape
    # Points are standardised, not confined to [-1, 1]: the build turns clipping off for them.
    assert parts.method.clip_denoised == (dataset.kind == "image")
    assert parts.config["method"]["clip_denoised"] == (dataset.kind == "image")


@pytest.mark.parametrize("experiment", [option for option in options("experiment") if option not in LATENT_OPTIONS])
def test_every_experiment_composes(experiment, cifar_root):
    cfg = compose_config(f"experiment={experiment}", *([f"data.root={cifar_root}"] if "cifar10" in experiment else []))
    assert isinstance(make_method(cfg.method), BaseMethod)
    assert isinstance(instantiate(cfg.data, _convert_="all"), BaseData)
    assert isinstance(build(cfg).model, torch.nn.Module)


@pytest.mark.parametrize("experiment", [option for option in options("experiment") if option not in LATENT_OPTIONS])
def test_evaluator_none_turns_off_every_presets_scoring(experiment, cifar_root):
    # the presets set evaluator.num_samples (and more): with evaluator=none those keys have nothing to configure,
    # where they once reached NoneEvaluator's constructor as a TypeError
    cfg = compose_config(f"experiment={experiment}", "evaluator=none",
                         *([f"data.root={cifar_root}"] if "cifar10" in experiment else []))
    evaluator = make_evaluator(cfg.evaluator)
    assert isinstance(evaluator, NoneEvaluator) and not evaluator.enabled


def test_experiment_presets_hold_their_choices():
    moons = compose_config("experiment=moons_mlp")
    assert moons.data._target_.endswith("MoonsData") and moons.model._target_.endswith("MLP")
    ddim = compose_config("experiment=digits_ddim_cosine")
    assert ddim.method.default_solver == "ddim" and ddim.schedule._target_.endswith("cosine_betas")


@pytest.mark.parametrize("trainer", options("trainer"))
@pytest.mark.parametrize("logger", options("logger"))
def test_trainer_sampler_logger_checkpoint_build(trainer, logger, tmp_path):
    cfg = compose_config(f"trainer={trainer}", f"logger={logger}", *TINY_UNET)
    parts = build(cfg)
    data, model, method = parts.data, parts.model, parts.method
    file_manager = parts.make_file_manager(tmp_path)
    run_logger = parts.make_logger(tmp_path, None)
    built = parts.make_trainer(model=model, method=method, data=data, file_manager=file_manager, logger=run_logger)
    sampler = parts.make_sampler(model)
    assert isinstance(file_manager, FileManager) and isinstance(run_logger, BaseLogger)
    assert isinstance(built, Trainer) and isinstance(sampler, Sampler)
    assert built.epochs == cfg.trainer.epochs
    assert not any(tmp_path.iterdir()), "building components must not write anything"
    run_logger.close()

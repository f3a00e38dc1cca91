"""REPA (Yu et al. 2025): the alignment loss's closed form, its tokens and targets, every method on DiT and U-ViT,
the forward pass unchanged, the one-line refusals, and a killed REPA run that resumes bit for bit."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from omegaconf import OmegaConf
from runs import ROOT, compose_config, main_in_process

from diffusion.app.method_config import make_method

from diffusion.evaluation.patch_features import ClassifierPatchFeatures, load_patch_encoder
from diffusion.models import DiT, UViT
from diffusion.models.unet import UNet
from diffusion.runtime.checks import ConfigError
from diffusion.storage.checkpoint import restore_trainable
from diffusion.storage.legacy import upgrade_config
from diffusion.training.repa import RepresentationAlignment, alignment_loss, token_targets

METHODS = ["ddpm", "edm", "flow_matching", "meanflow", "shortcut"]


def tiny(backbone: str, two_times: bool = False, image_size: int = 8) -> torch.nn.Module:
    torch.manual_seed(0)
    shape = dict(in_channels=1, image_size=image_size, patch_size=2, depth=3, hidden_size=32, num_heads=2,
                 num_classes=10, two_times=two_times)
    return DiT(**shape) if backbone == "dit" else UViT(**shape)


def aligned(method: str, network: torch.nn.Module, **settings) -> RepresentationAlignment:
    formulation = make_method(compose_config(f"method={method}", "method.num_timesteps=50").method)
    encoder = load_patch_encoder("digits")
    return RepresentationAlignment(formulation, network, encoder, (1, 8, 8), **{"projector_dim": 16, **settings})


def test_alignment_loss_is_minus_the_mean_cosine_similarity():
    target = torch.randn(2, 5, 7)
    assert torch.allclose(alignment_loss(3 * target, target), torch.tensor(-1.0))
    assert torch.allclose(alignment_loss(-target, target), torch.tensor(1.0))
    orthogonal = torch.tensor([[[1.0, 0.0]], [[0.0, 2.0]]])
    assert torch.allclose(alignment_loss(orthogonal.flip(-1), orthogonal), torch.tensor(0.0))


def test_token_targets_keep_a_matching_grid_and_interpolate_another():
    features = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    same = token_targets(features, 4)  # (B, 16, 3): row-major like the patch tokens
    assert same.shape == (2, 16, 3) and torch.equal(same[1, 4 * 2 + 1], features[1, :, 2, 1])
    constant = token_targets(torch.ones(1, 3, 2, 2), 4)
    assert constant.shape == (1, 16, 3) and torch.allclose(constant, torch.ones_like(constant))


def test_the_classifier_map_is_its_second_conv_stage():
    encoder = load_patch_encoder("mnist")
    assert isinstance(encoder, ClassifierPatchFeatures)
    assert (encoder.input_size, encoder.channels, encoder.dim) == (28, 1, 64)
    assert encoder(torch.zeros(2, 1, 28, 28)).shape == (2, 64, 7, 7)  # a patch-4 DiT's 7 x 7 tokens


@pytest.mark.parametrize("backbone", ["dit", "uvit"])
def test_the_forward_pass_is_unchanged_and_the_hook_sees_the_blocks_tokens(backbone):
    network, x, t, y = tiny(backbone), torch.randn(3, 1, 8, 8), torch.tensor([1.0, 20.0, 40.0]), torch.tensor([0, 1, 2])
    before = network(x, t, y)
    repa = aligned("ddpm", network, depth=2)
    assert torch.equal(network(x, t, y), before)
    layout = network.token_layout()
    repa.capture.active = True
    network(x, t, y)
    tokens = repa.capture.take()
    assert tokens.shape == (3, layout.prefix + 16, 32) and layout.side == 4
    assert layout.prefix == (0 if backbone == "dit" else 2)  # U-ViT: the time and label tokens come first


@pytest.mark.parametrize("backbone", ["dit", "uvit"])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_adds_lambda_times_the_alignment_and_trains_the_projector(method, backbone):
    network = tiny(backbone, two_times=method in ("meanflow", "shortcut"))
    repa = aligned(method, network, weight=0.5)
    x0, y = torch.rand(4, 1, 8, 8) * 2 - 1, torch.tensor([0, 1, 2, 3])
    t = torch.randint(0, 50, (4,))
    noise = torch.randn_like(x0)

    def loss_of(compute_loss):  # the same label drops and time draws for both
        torch.manual_seed(1)
        return compute_loss(network, x0, t=t, noise=noise, y=y)

    with torch.no_grad():  # validation: the method's loss alone
        assert torch.equal(loss_of(repa.compute_loss), loss_of(repa.method.compute_loss))
    loss, plain = loss_of(repa.compute_loss), loss_of(repa.method.compute_loss)
    assert -1.0 <= float((loss - plain).detach() / 0.5) <= 1.0 and not torch.equal(loss, plain)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in repa.trainable.parameters())
    assert network.patch_embed.weight.grad.abs().sum() > 0


def unet() -> UNet:
    return UNet(in_channels=1, image_size=8, base_channels=16, num_res_blocks=1, num_groups=4)


@pytest.mark.parametrize(("network", "settings", "key"), [
    (unet, {}, "method.repa.weight"),
    (lambda: tiny("dit"), {"depth": 4}, "method.repa.depth"),
    (lambda: tiny("uvit"), {"depth": 0}, "method.repa.depth"),
    (lambda: tiny("dit", image_size=16), {}, "method.repa.resize"),
])
def test_what_does_not_fit_is_refused_naming_the_key(network, settings, key):
    formulation = make_method(compose_config("method=ddpm").method)
    built = network()
    shape = (1, built.image_size, built.image_size)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        RepresentationAlignment(formulation, built, load_patch_encoder("digits"), shape, **settings)


def test_resize_brings_other_images_to_the_encoders_size():
    network = tiny("dit", image_size=16)
    formulation = make_method(compose_config("method=ddpm").method)
    repa = RepresentationAlignment(formulation, network, load_patch_encoder("mnist"), (1, 16, 16), resize=True,
                                   projector_dim=8)
    assert repa.encode(torch.zeros(2, 1, 16, 16)).shape == (2, 64, 7, 7)  # interpolated to the 8 x 8 tokens later


def test_dinov2_patch_tokens_from_a_local_folder(tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                          patch_size=14, image_size=224)
    Dinov2Model(config).save_pretrained(tmp_path / "dinov2")
    encoder = load_patch_encoder("dinov2", str(tmp_path / "dinov2"))
    assert (encoder.input_size, encoder.channels, encoder.dim) == (224, 3, 16)
    assert encoder(torch.zeros(1, 3, 224, 224)).shape == (1, 16, 16, 16)
    with pytest.raises(ConfigError, match="method.repa.encoder_path"):
        load_patch_encoder("dinov2", str(tmp_path / "absent"))


RUN = ["experiment=digits_dit", "model.depth=2", "model.hidden_size=16", "model.num_heads=2",
       "method.repa.encoder=digits", "method.repa.projector_dim=16", "method.num_timesteps=20",
       "trainer.progress=false", "evaluator=none", "sampler.num_samples=8"]


@pytest.mark.parametrize(("overrides", "key"), [
    (["data=digits", "trainer=fast", "evaluator=none", "method.repa.weight=0.5"], "method.repa.weight"),  # a U-Net
    ([*RUN, "method.repa.weight=0.5", "method.repa.depth=3"], "method.repa.depth"),
    ([*RUN, "method.repa.weight=0.5", "method.repa.encoder=mnist"], "method.repa.resize"),
    ([*RUN, "method.repa.weight=0.5", "method.repa.encoder=dinov2"], "method.repa.encoder_path"),
    ([*RUN, "method.repa.weight=-1"], "method.repa.weight"),
    ([*RUN, "repa.weight=0.5"], "method.repa.weight"),  # the key's place before it moved into the method
])
def test_bad_repa_settings_are_one_line_exit_2_and_write_nothing(overrides, key, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    capsys.readouterr()
    code = main_in_process(monkeypatch, f"hydra.run.dir={run_dir}", "trainer.max_steps=1", *overrides)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and key in lines[0], lines
    assert not run_dir.exists()


def test_a_killed_repa_run_resumes_bit_for_bit(tmp_path, monkeypatch):
    import kill_resume

    steps = 8
    monkeypatch.setattr(kill_resume, "FAULT_RUN", [
        *RUN, "method.repa.weight=0.5", "trainer.batch_size=32", f"trainer.max_steps={steps}", "trainer.warmup_steps=2",
        "trainer.log_every_n_steps=1", "++trainer.checkpoint_every_n_steps=1", "trainer.precision=fp32",
        "resume=auto",
    ])
    monkeypatch.setattr(kill_resume, "EPOCHS", 1)
    monkeypatch.setattr(kill_resume, "STEPS_PER_EPOCH", steps)
    kill_resume.assert_killed_run_resumes(tmp_path, monkeypatch)
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)
    assert "trainable_state_dict" in checkpoint  # the projector is trained state
    sampled = tmp_path / "sampled"  # sampling needs neither the encoder nor the projector
    assert main_in_process(monkeypatch, "task=sample", f"run_dir={tmp_path / 'run'}", f"hydra.run.dir={sampled}") == 0
    assert (sampled / "samples.npz").is_file()


def test_flow_matching_trains_a_dit_with_repa_and_a_run_of_the_old_layout_still_samples(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    assert main_in_process(monkeypatch, f"hydra.run.dir={run_dir}", *RUN, "method=flow_matching",
                           "method.repa.weight=0.5", "trainer.max_steps=2") == 0
    assert "trainable_state_dict" in torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    config = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
    assert config["method"]["repa"]["weight"] == 0.5 and "repa" not in config
    config["repa"] = config["method"].pop("repa")  # as runs were saved while REPA's keys were top-level
    assert upgrade_config(config)["method"]["repa"]["weight"] == 0.5 and "repa" not in upgrade_config(config)
    OmegaConf.save(OmegaConf.create(config), run_dir / "config.yaml")
    sampled = tmp_path / "sampled"
    assert main_in_process(monkeypatch, "task=sample", f"run_dir={run_dir}", f"hydra.run.dir={sampled}") == 0
    assert (sampled / "samples.npz").is_file()


def test_a_checkpoint_with_or_without_the_projector_fits_only_a_run_alike():
    projector = torch.nn.Linear(2, 2)
    restore_trainable({"trainable_state_dict": projector.state_dict()}, torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="needs"):
        restore_trainable({}, projector)  # resuming a run trained without REPA with method.repa.weight > 0
    with pytest.raises(ValueError, match="holds"):
        restore_trainable({"trainable_state_dict": projector.state_dict()}, None)


# Two ranks train a tiny DiT with REPA on the digits for a few steps (each its own batches, times and noise);
# each saves its network and projector parameters.
WORKER = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import torch

    from diffusion.data import DigitsData
    from diffusion.evaluation.patch_features import load_patch_encoder
    from diffusion.loggers import NullLogger
    from diffusion.methods import FlowMatching
    from diffusion.models import DiT
    from diffusion.runtime.distributed import DistributedContext, exit_process
    from diffusion.runtime.seeding import seed_everything
    from diffusion.storage.file_manager import FileManager
    from diffusion.training.repa import RepresentationAlignment
    from diffusion.training.trainer import Trainer

    out = Path(sys.argv[1])
    dist = DistributedContext.from_environment("cpu")
    torch.manual_seed(0)  # identical initial weights (network and projector) on every rank
    model = DiT(in_channels=1, image_size=8, patch_size=2, depth=2, hidden_size=16, num_heads=2)
    method = RepresentationAlignment(FlowMatching(num_timesteps=50), model, load_patch_encoder("digits"), (1, 8, 8),
                                     projector_dim=8)
    seed_everything(100 + dist.rank)
    trainer = Trainer(model, method, DigitsData(), FileManager(out / f"ckpt{dist.rank}"), NullLogger(), epochs=1,
                      max_steps=3, lr=1e-2, batch_size=64, device="cpu", progress=False, distributed=dist)
    trainer.train()
    torch.save([p.detach() for p in [*model.parameters(), *method.trainable.parameters()]], out / f"rank{dist.rank}.pt")
    dist.close()
    exit_process()  # a DDP rank skips finalisation (its docstring: PyTorch's exit race)
    """
)


# Fails when the projector's gradients (outside the DDP wrapper) are not averaged over the ranks.
@pytest.mark.slow  # torchrun with two gloo ranks: 20-40 s on 2 busy cores
def test_two_gloo_ranks_hold_identical_network_and_projector_after_their_steps(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert all(torch.equal(a, b) for a, b in zip(*ranks)), "the ranks' parameters differ after their steps"

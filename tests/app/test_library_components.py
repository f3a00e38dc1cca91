"""Trainer, FileManager, Sampler and FileLogger as library components (no Hydra)."""

from __future__ import annotations

import json
import math
from functools import partial

import pytest
import torch

from diffusion.data import MoonsData
from diffusion.training.ema import EMA
from diffusion.training.optimizer_step import fused_supported
from diffusion.storage.file_manager import CheckpointError, FileManager, load_checkpoint
from diffusion.loggers import FileLogger
from diffusion.methods import GaussianDiffusion
from diffusion.models import MLP
from diffusion.sampling.sampler import Sampler
from diffusion.methods.schedules import cosine_betas
from diffusion.training.trainer import Trainer
from diffusion.runtime.checks import ConfigError


def small_parts(tmp_path, epochs=2, **trainer_kwargs):
    torch.manual_seed(0)
    data = MoonsData(num_samples=400, noise=0.05)
    model = MLP(hidden_dim=32, num_layers=2, time_embed_dim=16)
    method = GaussianDiffusion(partial(cosine_betas), num_timesteps=50, clip_denoised=False, default_solver="ddim")
    file_manager = FileManager(tmp_path)
    logger = FileLogger(tmp_path, console=False)
    trainer = Trainer(
        model, method, data, file_manager, logger,
        epochs=epochs, lr=1e-3, batch_size=64, device="cpu", progress=False, **trainer_kwargs,
    )
    return trainer, file_manager, logger


def test_train_records_histories_and_checkpoints(tmp_path):
    trainer, file_manager, logger = small_parts(tmp_path, epochs=3)
    summary = trainer.train()
    logger.close()
    train, val = trainer.get_loss_histories()
    assert len(train) == len(val) == 3 and all(math.isfinite(v) for v in train + val)
    assert summary["global_step"] == 3 * math.ceil(360 / 64)
    assert summary["best_val_loss"] == min(val)
    ckpt = file_manager.load("best")
    assert ckpt["train_state"]["val_losses"][: ckpt["train_state"]["epoch"]] == val[: ckpt["train_state"]["epoch"]]
    assert ckpt["train_state"]["best_val_loss"] == min(val[: ckpt["train_state"]["epoch"]])
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if "epoch" in r] == [1, 2, 3]
    assert (tmp_path / "loss_curve.png").is_file()


def test_validation_loss_is_fixed_across_calls(tmp_path):
    trainer, _, logger = small_parts(tmp_path)
    assert trainer.validate() == trainer.validate()  # fixed timesteps and noise: no sampling variance
    logger.close()


def test_lr_warmup_then_cosine(tmp_path):
    trainer, _, logger = small_parts(tmp_path, epochs=10, warmup_steps=5, lr_schedule="cosine", min_lr_ratio=0.1)
    factors = [trainer.lr_factor(step) for step in range(trainer.total_steps + 1)]
    assert factors[0] == pytest.approx(0.2) and factors[4] == pytest.approx(1.0)
    assert factors[5] == pytest.approx(1.0) and factors[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(factors[5:], factors[6:]))
    logger.close()


def test_max_steps_counts_optimizer_steps_and_stops_mid_epoch(tmp_path):
    """``trainer.max_steps`` (papers count steps) replaces epochs: 8 steps at 6 per epoch end inside epoch 2."""
    trainer, file_manager, logger = small_parts(tmp_path, epochs=50, max_steps=8, lr_schedule="cosine",
                                                min_lr_ratio=0.1)
    assert trainer.steps_per_epoch == 6 and trainer.epochs == 2 and trainer.total_steps == 8
    summary = trainer.train()
    logger.close()
    assert summary["global_step"] == 8
    assert trainer.lr_factor(8) == pytest.approx(0.1)  # the LR schedule spans max_steps, not 50 epochs
    assert file_manager.load("last")["train_state"]["global_step"] == 8
    assert len(trainer.get_loss_histories()[1]) == 2


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [({"lr": 0.0}, "trainer.lr"), ({"max_steps": 0}, "trainer.max_steps"), ({"epochs": 0}, "trainer.epochs"), ({"precision": "fp8"}, "trainer.precision"),
     ({"ema_decay": 1.0}, "trainer.ema_decay"), ({"lr_schedule": "step"}, "trainer.lr_schedule")],
)
def test_trainer_rejects_bad_arguments(tmp_path, kwargs, key):
    base = {"epochs": 1, "lr": 1e-3, "batch_size": 8, "device": "cpu"}
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        Trainer(MLP(hidden_dim=8, num_layers=1), GaussianDiffusion(cosine_betas, 10, default_solver="ddpm"), MoonsData(num_samples=50),
                FileManager(tmp_path), FileLogger(tmp_path), **{**base, **kwargs})


def test_ema_tracks_and_warms_up():
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, decay=0.99)
    assert ema.current_decay() == pytest.approx(0.1)  # warm-up: early updates follow the weights closely
    with torch.no_grad():
        model.weight.fill_(1.0)
    for _ in range(2000):
        ema.update(model)
    assert torch.allclose(ema.shadow.weight, model.weight, atol=1e-6)


def test_ema_follows_weights_loaded_or_moved_after_its_first_update():
    # The EMA lists the parameters once; weights loaded into the model, or a new model, must still be averaged.
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = EMA(model, decay=0.5, warmup=False)
    ema.update(model)
    target = {k: torch.full_like(v, 3.0) for k, v in model.state_dict().items()}
    model.load_state_dict(target)
    model.to(torch.float64)  # replaces every parameter's data: the listed Parameter objects see it
    ema.shadow.to(torch.float64)
    for _ in range(60):
        ema.update(model)
    assert torch.allclose(ema.shadow[0].weight, torch.full((2, 2), 3.0, dtype=torch.float64))
    assert torch.equal(ema.shadow[1].running_mean, model[1].running_mean)  # buffers copied
    other = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)).double()
    torch.nn.init.constant_(other[0].weight, -1.0)
    for _ in range(60):
        ema.update(other)
    assert torch.allclose(ema.shadow[0].weight, torch.full((2, 2), -1.0, dtype=torch.float64))


def test_trainer_steps_with_pytorchs_fused_adamw_on_the_cpu(tmp_path):
    trainer, _, _ = small_parts(tmp_path)
    assert trainer.step.optimizer.defaults["fused"] is True
    assert not fused_supported([torch.zeros(2, dtype=torch.long)]) and not fused_supported([])


def test_file_manager_keeps_last_k_and_refuses_code(tmp_path):
    manager = FileManager(tmp_path, save_every_n_epochs=1, keep_last_k=2)
    trainer, _, logger = small_parts(tmp_path / "t")
    state = trainer.checkpoint_dict()
    for epoch in range(1, 5):
        manager.save({**state, "train_state": {**state["train_state"], "epoch": epoch}}, is_best=epoch == 2)
    assert [p.name for p in manager.periodic_checkpoints()] == ["epoch_0003.pt", "epoch_0004.pt"]
    assert manager.load("best")["train_state"]["epoch"] == 2 and manager.load("last")["train_state"]["epoch"] == 4
    assert not list(manager.checkpoint_dir.glob("*.tmp")), "no temporary files left behind"

    marker = tmp_path / "code-ran"

    class Exploit:
        def __reduce__(self):
            return (marker.touch, ())

    evil = tmp_path / "evil.pt"
    torch.save({"model_state_dict": {}, "payload": Exploit()}, evil)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(evil)
    assert not marker.exists(), "loading must not execute pickled code"
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes((manager.checkpoint_dir / "last.pt").read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(damaged)
    logger.close()


def test_sampler_is_seeded_and_batch_independent_of_device(tmp_path):
    trainer, file_manager, logger = small_parts(tmp_path, epochs=1)
    trainer.train()
    logger.close()
    model = MLP(hidden_dim=32, num_layers=2, time_embed_dim=16)
    method = GaussianDiffusion(partial(cosine_betas), num_timesteps=50, clip_denoised=False, default_solver="ddim")
    sampler = Sampler(model, method, (2,), num_samples=10, batch_size=4, steps=5, eta=1.0, seed=3, device="cpu")
    ckpt = sampler.load_checkpoint(file_manager, "best")
    assert ckpt["train_state"]["epoch"] == 1
    first, second = sampler.sample(), sampler.sample()
    assert first.samples.shape == (10, 2) and first.steps == 5
    assert torch.equal(first.samples, second.samples)
    other = Sampler(model, method, (2,), num_samples=10, batch_size=4, steps=5, eta=1.0, seed=4, device="cpu")
    assert not torch.equal(other.sample().samples, first.samples)


def test_sampler_records_a_trajectory():
    model = MLP(hidden_dim=8, num_layers=1, time_embed_dim=8)
    method = GaussianDiffusion(cosine_betas, num_timesteps=20, clip_denoised=False, default_solver="ddpm")
    result = Sampler(model, method, (2,), num_samples=5, device="cpu").sample(record_timesteps=[19, 10, -1],
                                                                               trajectory_samples=3)
    assert sorted(result.trajectory) == [-1, 10, 19]
    assert result.trajectory[-1].shape == (3, 2)
    assert torch.equal(result.trajectory[-1], result.samples[:3])


def test_sampler_rejects_more_steps_than_timesteps():
    method = GaussianDiffusion(cosine_betas, num_timesteps=20, default_solver="ddim")
    with pytest.raises(ConfigError, match="sampler.steps"):
        Sampler(MLP(hidden_dim=8, num_layers=1), method, (2,), steps=50, device="cpu")


class LabelEcho(torch.nn.Module):
    """A 'network' whose output is its class label (null label = num_classes): makes guidance visible."""

    num_classes = 3

    def forward(self, x, t, y=None):
        y = torch.full((x.shape[0],), self.num_classes) if y is None else y
        return y.to(x.dtype).reshape(-1, 1).expand_as(x).clone()


@pytest.mark.parametrize("scale", [0.0, 1.0, 3.0])
def test_guidance_combines_conditional_and_unconditional(scale):
    method = GaussianDiffusion(cosine_betas, num_timesteps=10, prediction="x0", clip_denoised=False, default_solver="ddim")
    sampler = Sampler(LabelEcho(), method, (2,), num_samples=4, guidance_scale=scale, class_labels=[1, 2],
                      device="cpu")
    y = torch.tensor([1, 2, 1, 2])
    out = sampler._model_output(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), y)
    expected = 3 + scale * (y.float() - 3)  # uncond (null label 3) + w (cond - uncond)
    assert torch.allclose(out[:, 0], expected)
    assert sampler.sample().labels.tolist() == [1, 2, 1, 2]


def test_class_labels_all_gives_one_row_per_class():
    method = GaussianDiffusion(cosine_betas, num_timesteps=10, prediction="x0", clip_denoised=False, default_solver="ddim")
    sampler = Sampler(LabelEcho(), method, (2,), num_samples=6, class_labels="all", device="cpu")
    assert sampler.labels_for(6).tolist() == [0, 0, 1, 1, 2, 2]
    assert sampler.grid_row_length(6) == 2


def test_class_labels_need_a_conditional_model():
    with pytest.raises(ConfigError, match="sampler.class_labels"):
        Sampler(MLP(hidden_dim=8, num_layers=1), GaussianDiffusion(cosine_betas, 10, default_solver="ddim"), (2,), class_labels=[0], device="cpu")
    with pytest.raises(ConfigError, match="sampler.class_labels"):
        Sampler(LabelEcho(), GaussianDiffusion(cosine_betas, 10, default_solver="ddim"), (2,), class_labels=[7], device="cpu")


def test_precision_auto_picks_bf16_only_where_the_hardware_has_it(monkeypatch):
    from diffusion.runtime.devices import fast_bf16, resolve_precision

    cpu = torch.device("cpu")
    assert fast_bf16(cpu, "fpu sse avx2 avx512f avx512_bf16")
    assert fast_bf16(cpu, "fpu avx2 amx_bf16 amx_tile")
    assert not fast_bf16(cpu, "fpu sse avx2 avx512f")  # AVX-512 without its BF16 extension emulates bf16
    monkeypatch.setattr("diffusion.runtime.devices.fast_bf16", lambda device, flags=None: False)
    assert resolve_precision("auto", cpu, "trainer.precision") == "fp32"
    monkeypatch.setattr("diffusion.runtime.devices.fast_bf16", lambda device, flags=None: True)
    assert resolve_precision("auto", cpu, "trainer.precision") == "bf16"
    assert resolve_precision("fp32", cpu, "trainer.precision") == "fp32"  # an explicit choice is kept
    with pytest.raises(ConfigError, match="sampler.precision"):
        resolve_precision("fp8", cpu, "sampler.precision")


def test_autocast_takes_only_a_resolved_precision():
    from diffusion.runtime.devices import autocast

    cpu = torch.device("cpu")
    with autocast(cpu, "bf16"):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    with autocast(cpu, "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with pytest.raises(ValueError, match="got 'auto'"):  # once silently float16 autocast on the CPU
        autocast(cpu, "auto")

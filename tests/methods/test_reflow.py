"""Reflow's parts: pairs drawn by the teacher's ODE (each pair's noise the first draw of its sample's stream),
resumable chunk by chunk to the same bytes, damaged chunks and changed settings refused in one line naming the
file; the reflowed flow trains through the Trainer on the fixed coupling; teachers that are not flows refused."""

from __future__ import annotations

import math

import pytest
import torch
from gaussian_flow import GaussianOracle, ode_map

from diffusion.loggers import FileLogger
from diffusion.methods import EDM, FlowMatching, PairedFlowMatching
from diffusion.models.mlp import MLP
from diffusion.runtime.checks import ConfigError
from diffusion.sampling.sampler import Sampler
from diffusion.storage.file_manager import FileManager
from diffusion.tasks.reflow import PAIRS_DIR, check_teacher, generate_pairs, paired_data
from diffusion.training.trainer import Trainer

MU, S = 0.5, 0.3


def teacher(seed: int = 0) -> Sampler:
    method = FlowMatching(clip_denoised=False)
    return Sampler(GaussianOracle(method, MU, S), method, (2,), solver="midpoint", steps=20, device="cpu", seed=seed)


def quiet(message: str) -> None:
    pass


def test_pairs_are_the_teachers_ode_map_of_their_noise(tmp_path):
    pairs = generate_pairs(teacher(), tmp_path, num_pairs=10, chunk_size=4, log=quiet)
    assert pairs.noise.shape == pairs.samples.shape == (10, 2) and pairs.labels is None
    torch.testing.assert_close(pairs.samples.double(), ode_map(FlowMatching(), pairs.noise.double(), MU, S),
                               atol=1e-3, rtol=0)


def test_an_interrupted_generation_continues_to_the_same_files(tmp_path):
    whole = generate_pairs(teacher(), tmp_path / "whole", num_pairs=10, chunk_size=4, log=quiet)
    resumed_dir = tmp_path / "resumed"
    generate_pairs(teacher(), resumed_dir, num_pairs=10, chunk_size=4, log=quiet)
    last = resumed_dir / PAIRS_DIR / "pairs_00000008.npz"
    last.with_name(last.name + ".sha256").unlink()  # killed between the file and its sidecar
    (resumed_dir / PAIRS_DIR / "pairs_00000004.npz").unlink()  # killed before this chunk
    resumed = generate_pairs(teacher(), resumed_dir, num_pairs=10, chunk_size=4, log=quiet)
    assert torch.equal(resumed.samples, whole.samples) and torch.equal(resumed.noise, whole.noise)
    for name in ("pairs_00000000.npz", "pairs_00000004.npz", "pairs_00000008.npz"):
        assert (resumed_dir / PAIRS_DIR / name).read_bytes() == (tmp_path / "whole" / PAIRS_DIR / name).read_bytes()


def test_a_damaged_chunk_or_other_settings_are_one_line_naming_the_file(tmp_path):
    generate_pairs(teacher(), tmp_path, num_pairs=8, chunk_size=4, log=quiet)
    chunk = tmp_path / PAIRS_DIR / "pairs_00000004.npz"
    payload = bytearray(chunk.read_bytes())
    payload[-10] ^= 0xFF
    chunk.write_bytes(bytes(payload))
    with pytest.raises(ConfigError, match="pairs_00000004.npz is damaged") as error:
        generate_pairs(teacher(), tmp_path, num_pairs=8, chunk_size=4, log=quiet)
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="pairs.json holds pairs of other settings"):
        generate_pairs(teacher(seed=1), tmp_path, num_pairs=8, chunk_size=4, log=quiet)
    with pytest.raises(ConfigError, match="reflow.num_pairs"):
        generate_pairs(teacher(), tmp_path / "other", num_pairs=0, log=quiet)


def test_the_reflowed_flow_trains_on_the_fixed_coupling(tmp_path):
    pairs = generate_pairs(teacher(), tmp_path, num_pairs=64, chunk_size=64, log=quiet)
    data = paired_data(pairs, "points", 0)
    method = PairedFlowMatching(num_timesteps=20, clip_denoised=False)
    assert data.sample_shape == (2,) and data.load().train.shape[1:] == (4,)
    model = MLP(hidden_dim=16, num_layers=1, time_embed_dim=8)
    packed = torch.cat([pairs.samples[:8], pairs.noise[:8]], dim=1)
    t = torch.arange(8)
    torch.manual_seed(0)
    paired_loss = method.compute_loss(model, packed, t=t, noise=torch.randn(8, 4))  # the pair's noise wins
    plain = FlowMatching(num_timesteps=20).compute_loss(model, pairs.samples[:8], t=t, noise=pairs.noise[:8])
    assert torch.equal(paired_loss, plain)
    trainer = Trainer(model, method, data, FileManager(tmp_path / "run"), FileLogger(tmp_path / "run", console=False),
                      epochs=2, lr=1e-3, batch_size=16, device="cpu", progress=False)
    summary = trainer.train()
    assert math.isfinite(summary["best_val_loss"])


def test_reflow_needs_a_flow_teacher_and_an_ode_solver():
    with pytest.raises(ConfigError, match="run_dir=.*needs a flow run"):
        check_teacher(EDM(), "heun", "outputs/edm")
    with pytest.raises(ConfigError, match="sampler.solver=euler_maruyama"):
        check_teacher(FlowMatching(), "euler_maruyama", "outputs/flow")
    with pytest.raises(ConfigError, match="method.coupling"):
        PairedFlowMatching(coupling="ot")

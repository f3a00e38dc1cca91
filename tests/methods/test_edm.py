"""EDM (Karras et al. 2022): preconditioning identities, training sigmas, the loss, the config options, and one
training run of run.py end to end followed by sampling from it with another solver."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from diffusion.app.method_config import make_method
from diffusion.storage.file_manager import load_checkpoint
from diffusion.methods import EDM, GaussianDiffusion
from diffusion.models import MLP
from diffusion.sampling.sampler import Sampler
from diffusion.sampling.solvers import ddim
from diffusion.runtime.checks import ConfigError
from runs import compose_config, main_in_process

SIGMAS = torch.tensor([1e-3, 0.002, 0.1, 0.5, 1.0, 5.0, 80.0], dtype=torch.float64)


def test_preconditioning_identities():
    method = EDM(sigma_data=0.5)
    c_skip, c_out, c_in, c_noise = method.preconditioning(SIGMAS)
    sd = method.sigma_data
    torch.testing.assert_close(c_in**2 * (SIGMAS**2 + sd**2), torch.ones_like(SIGMAS))  # unit-variance input
    # The effective training target (y - c_skip (y + sigma n)) / c_out has unit variance (EDM App. B.6).
    target_var = ((1 - c_skip) ** 2 * sd**2 + c_skip**2 * SIGMAS**2) / c_out**2
    torch.testing.assert_close(target_var, torch.ones_like(SIGMAS))
    torch.testing.assert_close(method.loss_weights(SIGMAS) * c_out**2, torch.ones_like(SIGMAS))  # lambda = 1/c_out^2
    torch.testing.assert_close(c_noise, SIGMAS.log() / 4)
    c_skip0, c_out0, _, _ = method.preconditioning(torch.zeros(1, dtype=torch.float64))
    assert c_skip0.item() == 1.0 and c_out0.item() == 0.0


def test_denoiser_at_sigma_zero_is_the_identity():
    method = EDM(clip_denoised=False)
    x = torch.randn(5, 3)
    network = lambda x_in, c_noise: torch.ones_like(x_in) * 7.0  # anything finite
    assert torch.equal(method.precondition(network, x, torch.zeros(5, dtype=torch.float64)), x)


def test_training_sigmas_are_log_normal_and_validation_sigmas_their_quantiles():
    method = EDM(num_timesteps=100, p_mean=-1.2, p_std=1.2)
    torch.manual_seed(0)
    log_sigma = method.training_sigmas(None, 20000, torch.device("cpu")).log()
    assert abs(log_sigma.mean().item() + 1.2) < 0.03 and abs(log_sigma.std().item() - 1.2) < 0.03
    t = torch.arange(100)
    sigma = method.training_sigmas(t, 100, torch.device("cpu"))
    quantiles = torch.distributions.Normal(-1.2, 1.2).icdf((t.double() + 0.5) / 100)
    torch.testing.assert_close(sigma.log(), quantiles)
    assert (sigma.diff() > 0).all() and torch.equal(sigma, method.training_sigmas(t, 100, torch.device("cpu")))


def test_loss_is_eq_8_and_the_plain_mse_of_the_effective_target():
    method = EDM(num_timesteps=10, sigma_data=0.5)
    torch.manual_seed(0)
    model = MLP(dim=2, hidden_dim=16, num_layers=1)
    x0, noise, t = torch.randn(10, 2), torch.randn(10, 2), torch.arange(10)
    loss = method.compute_loss(model, x0, t=t, noise=noise)
    sigma = method.training_sigmas(t, 10, torch.device("cpu"))
    c_skip, c_out, c_in, c_noise = (c.float()[:, None] for c in method.preconditioning(sigma))
    x = x0 + sigma.float()[:, None] * noise
    output = model(c_in * x, c_noise[:, 0])
    effective_target = (x0 - c_skip * x) / c_out  # EDM eq. 2: lambda ||D - y||^2 = ||F - target||^2
    torch.testing.assert_close(loss, (output - effective_target).pow(2).mean(), rtol=1e-4, atol=1e-6)
    loss.backward()  # differentiable through the preconditioning
    assert all(p.grad is not None for p in model.parameters())


class LabelRecorder(nn.Module):
    num_classes = 3

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))
        self.labels: list[torch.Tensor] = []

    def forward(self, x, t, y=None):
        self.labels.append(y)
        return x * self.weight


def test_labels_are_dropped_in_training_only():
    method = EDM(cond_drop_prob=1.0)
    model, x0, y = LabelRecorder(), torch.randn(6, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    method.compute_loss(model.train(), x0, y=y)
    assert torch.equal(model.labels[-1], torch.full_like(y, 3))
    method.compute_loss(model.eval(), x0, y=y)
    assert torch.equal(model.labels[-1], y)


def test_invalid_arguments_name_their_key():
    for kwargs, key in [({"sigma_data": 0.0}, "method.sigma_data"), ({"p_std": -1.0}, "method.p_std"),
                        ({"sigma_min": 10.0, "sigma_max": 1.0}, "method.sigma_max"),
                        ({"num_timesteps": 0}, "method.num_timesteps"), ({"default_solver": "ddim"}, "sampler.solver")]:
        with pytest.raises(ConfigError, match=key):
            EDM(**kwargs)
    with pytest.raises(ConfigError, match="sampler.solver="):
        EDM(schedule=None, prediction="epsilon")  # a Gaussian diffusion's keys


@pytest.mark.parametrize("option", ["edm", "euler", "heun", "dpmpp_2m_karras"])
def test_method_options_compose_and_sample_a_run_of_either_kind(option):
    """``task=sample run_dir=<run> method=<option>`` keeps the run's trained method and takes the option's default
    solver (run.py's sampling_method_config): a Gaussian-diffusion run and an EDM run both sample with it."""
    chosen = compose_config(f"method={option}", "data=moons").method
    solver = "heun" if option == "edm" else option
    assert chosen.default_solver == solver
    for trained in ("ddpm", "edm"):
        run_method = compose_config(f"method={trained}", "data=moons").method.copy()
        run_method.default_solver = chosen.default_solver
        method = make_method(run_method)
        assert isinstance(method, EDM if trained == "edm" else GaussianDiffusion) and method.default_solver == solver
    sampler = instantiate(compose_config(f"method={option}", "data=moons").sampler, _convert_="all")
    model = MLP(dim=2, hidden_dim=8, num_layers=1)
    built = sampler(model=model, method=make_method(chosen), sample_shape=(2,))
    assert isinstance(built, Sampler) and built.rho == 7.0 and built.guide_model is None and built.solver == solver


def test_heun_option_trains_like_ddpm():
    method = make_method(compose_config("method=heun", "data=moons").method)
    assert isinstance(method, GaussianDiffusion) and method.default_solver == "heun"
    loss = method.compute_loss(MLP(dim=2, hidden_dim=8, num_layers=1), torch.randn(4, 2))
    assert torch.isfinite(loss)


def test_edm_trains_end_to_end_with_the_unchanged_trainer(tmp_path, monkeypatch):
    """``python run.py method=edm data=moons model=mlp trainer=fast``: trains, validates on the fixed sigma
    quantiles, samples with Heun from the best EMA checkpoint."""
    run_dir = tmp_path / "run"
    assert main_in_process(monkeypatch, f"hydra.run.dir={run_dir}", "method=edm", "data=moons", "model=mlp",
                           "trainer=fast", "trainer.epochs=1", "data.num_samples=300", "model.hidden_dim=16",
                           "model.num_layers=1", "method.sigma_data=1.0", "sampler.num_samples=32", "sampler.steps=6",
                           "evaluator=none") == 0
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert ckpt["config"]["method"]["_target_"] == "diffusion.methods.EDM"
    assert all(math.isfinite(v) for v in ckpt["train_state"]["val_losses"]) and len(ckpt["train_state"]["val_losses"]) == 1
    samples = np.load(run_dir / "samples.npz")["samples"]
    assert samples.shape == (32, 2) and np.isfinite(samples).all() and np.abs(samples).max() < 10
    saved = OmegaConf.load(run_dir / "config.yaml")
    assert saved.method.default_solver == "heun" and not saved.method.clip_denoised  # moons turns clipping off


def test_ddim_on_edms_denoiser_is_euler_and_its_ancestral_step_keeps_the_marginal_variance():
    """The ddim solver on EDM's denoiser: at eta = 0 its step is the ODE's Euler step, and at eta = 1 a step from
    sigma to sigma_next on pure noise (D = 0, data at a point mass) leaves std sigma_next."""
    method = EDM(clip_denoised=False)
    zero = lambda x, c_noise: torch.zeros_like(x)  # noqa: E731 - F = 0: D = c_skip x
    x = torch.randn(20000, 2, generator=torch.Generator().manual_seed(0)) * 3.0
    stepped = ddim(lambda x_, sigma: method.denoise(zero, x_, sigma), x, [3.0, 1.0], noise=None)
    c_skip = method.sigma_data**2 / (9.0 + method.sigma_data**2)
    torch.testing.assert_close(stepped, x + (1.0 - 3.0) * (x - c_skip * x) / 3.0)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))

    def point_mass(scaled_x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:  # F with D(x; sigma) = 0
        sigma = (4 * c_noise.double()).exp().reshape(-1, 1)
        c_skip, c_out, c_in, _ = method.preconditioning(sigma)
        return (-c_skip / c_out * scaled_x.double() / c_in).to(scaled_x.dtype)

    assert method.denoise(point_mass, x, 3.0).abs().max() < 1e-5
    sampled = ddim(lambda x_, sigma: method.denoise(point_mass, x_, sigma), x, [3.0, 1.0], lambda: noise, eta=1.0)
    assert abs(float(sampled.std()) - 1.0) < 0.02, "x ~ N(0, 3^2) steps to N(0, 1^2)"

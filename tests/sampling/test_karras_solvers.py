"""Sigma-space samplers (Karras et al. 2022): the Karras schedule and Euler steps against diffusers, solvers on a
Gaussian data set whose optimal denoiser is closed-form, the DDPM denoiser view, NFE, and guidance in the denoiser."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from torch import nn

from diffusion.methods import EDM, BaseMethod, GaussianDiffusion
from diffusion.methods.schedules import cosine_betas, linear_betas
from diffusion.runtime.checks import ConfigError
from diffusion.sampling.grids import build_grid, karras_sigmas
from diffusion.sampling.guidance import autoguided_output
from diffusion.sampling.sampler import SampleNoise, Sampler
from diffusion.sampling.solvers import SOLVERS, dpmpp_2m, euler, heun

diffusers = pytest.importorskip("diffusers")

MU, STD = 0.5, 0.3  # the Gaussian data set N(MU, STD^2) per coordinate


def gaussian_denoiser(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """The optimal D(x; sigma) = E[y | y + sigma n = x] for y ~ N(MU, STD^2):
    MU + STD^2 / (STD^2 + sigma^2) (x - MU)."""
    return MU + STD**2 / (STD**2 + sigma**2) * (x - MU)


def exact_ode_solution(x_max: torch.Tensor, sigma_max: float) -> torch.Tensor:
    """The probability-flow ODE's x at sigma = 0 for the Gaussian: x - MU scales with sqrt(STD^2 + sigma^2)."""
    return MU + STD / math.sqrt(STD**2 + sigma_max**2) * (x_max - MU)


def gaussian_method(schedule, solver: str, **kwargs) -> GaussianDiffusion:
    return GaussianDiffusion(schedule, default_solver=solver, **kwargs)


def karras(method: BaseMethod, steps: int) -> list[float]:
    """The method's Karras sigmas (EDM eq. 5 over its own range), then 0."""
    return build_grid(method, "karras", steps, "leading").sigmas


class GaussianEDMNetwork(nn.Module):
    """F with EDM preconditioning equal to the optimal Gaussian denoiser: F = (D - c_skip x) / c_out."""

    def __init__(self, method: EDM) -> None:
        super().__init__()
        self.method = method

    def forward(self, x_in: torch.Tensor, c_noise: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        sigma = (4 * c_noise.double()).exp()[:, None]  # (B, 1)
        c_skip, c_out, c_in, _ = self.method.preconditioning(sigma)
        x = x_in.double() / c_in
        return ((gaussian_denoiser(x, sigma) - c_skip * x) / c_out).float()


class GaussianEpsilonNetwork(nn.Module):
    """epsilon prediction of a DDPM-trained view that is exactly the Gaussian denoiser at every fractional t."""

    def __init__(self, method: GaussianDiffusion) -> None:
        super().__init__()
        self.log_sigmas = method.sigmas.log()

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        t = t.double()
        low = t.floor().long().clamp(max=len(self.log_sigmas) - 2)
        log_sigma = torch.lerp(self.log_sigmas[low], self.log_sigmas[low + 1], t - low)  # inverse of sigma_to_t
        sigma = log_sigma.exp()[:, None]
        x = x_t.double() * (1 + sigma**2).sqrt()
        return ((x - gaussian_denoiser(x, sigma)) / sigma).float()


# ---------------------------------------------------------------------------------------------------------
# Against diffusers
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [1, 5, 18])
def test_karras_sigmas_match_diffusers_edm(steps):
    reference = diffusers.EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0, rho=7.0)
    reference.set_timesteps(steps)
    ours = torch.tensor(karras_sigmas(steps, 0.002, 80.0, 7.0))
    torch.testing.assert_close(ours.float(), reference.sigmas.float(), rtol=1e-6, atol=1e-6)
    assert ours[-1] == 0 and len(ours) == steps + 1


def test_edm_euler_sampling_matches_diffusers():
    """The whole EDM Euler loop (preconditioning, c_noise, steps) against EDMEulerScheduler, float32."""
    method = EDM(clip_denoised=False)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 2))
    network = lambda x_in, c_noise: net(torch.cat([x_in, c_noise.reshape(-1, 1).expand(len(x_in), 1)], 1))
    x_max = torch.randn(4, 2) * 80.0
    sigmas = karras(method, 6)
    ours = euler(lambda x, sigma: method.denoise(network, x, sigma), x_max, sigmas, noise=None)

    scheduler = diffusers.EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5, rho=7.0)
    scheduler.set_timesteps(6)
    x = x_max.clone()
    for t in scheduler.timesteps:
        output = network(scheduler.scale_model_input(x, t), t.reshape(1).float())
        x = scheduler.step(output, t, x).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # diffusers' np.array(tensor)
@pytest.mark.parametrize("schedule", [linear_betas, cosine_betas])
def test_ddpm_view_karras_sigmas_timesteps_and_euler_match_diffusers(schedule):
    """A DDPM-trained epsilon model sampled by Euler over Karras sigmas: the sigmas, the fractional timesteps (log-sigma
    interpolation) and the samples match EulerDiscreteScheduler(use_karras_sigmas=True)."""
    method = gaussian_method(schedule, "euler", num_timesteps=1000, clip_denoised=False)
    scheduler = diffusers.EulerDiscreteScheduler(num_train_timesteps=1000, use_karras_sigmas=True,
                                                 timestep_spacing="linspace")
    scheduler.alphas_cumprod = method.alphas_cumprod  # the same float64 schedule (diffusers builds a float32 one)
    scheduler.sigmas = None
    scheduler.set_timesteps(8)
    torch.testing.assert_close(torch.tensor(karras(method, 8)).float(), scheduler.sigmas.float(), rtol=1e-6, atol=0)
    ours_t = torch.tensor([method.sigma_to_t(s) for s in karras(method, 8)[:-1]])
    torch.testing.assert_close(ours_t.float(), scheduler.timesteps.float(), rtol=1e-4, atol=2e-3)

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 2))
    network = lambda x_in, t: net(torch.cat([x_in, t.reshape(-1, 1).expand(len(x_in), 1) / 1000], 1))
    x_max = torch.randn(4, 2) * method.sigma_max
    ours = euler(lambda x, sigma: method.denoise(network, x, sigma), x_max, karras(method, 8), noise=None)
    x = x_max.clone()
    for t in scheduler.timesteps:
        x = scheduler.step(network(scheduler.scale_model_input(x, t), t.reshape(1).float()), t, x).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------
# Solvers on the Gaussian (closed-form denoiser and ODE solution)
# ---------------------------------------------------------------------------------------------------------
def test_solvers_converge_to_the_exact_ode_solution_with_their_order():
    x_max = torch.randn(256, 2, dtype=torch.float64) * 80.0
    exact = exact_ode_solution(x_max, 80.0)

    def error(solver, steps):
        return (solver(gaussian_denoiser, x_max, karras_sigmas(steps, 0.002, 80.0), None) - exact).abs().max().item()

    # Past the first few (large, rho = 7) steps, doubling the steps divides the error by ~4 (second order) or ~2.
    assert error(heun, 40) < error(heun, 20) / 3.5
    assert error(dpmpp_2m, 40) < error(dpmpp_2m, 20) / 3.5
    assert 1.5 < error(euler, 20) / error(euler, 40) < 2.5
    assert error(dpmpp_2m, 5) < 0.5 * STD  # the lower-order final step keeps 5 steps stable


def test_heun_with_churn_uses_its_noise_and_without_churn_needs_none():
    x = torch.randn(8, 2, dtype=torch.float64) * 80.0
    calls = []

    def noise():
        calls.append(1)
        return torch.randn(8, 2, dtype=torch.float64)

    sigmas = karras_sigmas(10, 0.002, 80.0)
    heun(gaussian_denoiser, x, sigmas, noise, s_churn=0.0)
    assert not calls
    heun(gaussian_denoiser, x, sigmas, noise, s_churn=40.0, s_tmin=0.05, s_tmax=50.0)
    assert len(calls) == sum(0.05 <= s <= 50.0 for s in sigmas[:-1])


def gaussian_sampler(method, steps: int, **kwargs) -> Sampler:
    network = GaussianEDMNetwork(method) if isinstance(method, EDM) else GaussianEpsilonNetwork(method)
    return Sampler(network, method, (2,), num_samples=4000, batch_size=4000, steps=steps, device="cpu", **kwargs)


SAMPLED = [
    (lambda: EDM(clip_denoised=False, default_solver="dpmpp_2m_karras"), 5, 0.0),
    (lambda: EDM(clip_denoised=False, default_solver="heun"), 18, 0.0),
    (lambda: EDM(clip_denoised=False, default_solver="heun"), 18, 40.0),  # EDM Alg. 2
    (lambda: EDM(clip_denoised=False, default_solver="euler"), 10, 0.0),
    (lambda: gaussian_method(linear_betas, "dpmpp_2m_karras", clip_denoised=False), 5, 0.0),
    (lambda: gaussian_method(cosine_betas, "heun", clip_denoised=False), 10, 0.0),
]


@pytest.mark.parametrize(("build", "steps", "churn"), SAMPLED)
def test_sampler_runs_the_solver_on_the_denoiser_the_network_defines(build, steps, churn):
    """Network -> preconditioning (EDM) or DDPM view -> Sampler loop equals the solver applied to the closed-form
    denoiser directly, sample by sample, from the same seeded noise."""
    method = build()
    samples = gaussian_sampler(method, steps, s_churn=churn).sample(num_samples=64).samples
    noise = SampleNoise(0, range(64), (2,))  # the Sampler's per-sample streams of sampler.seed=0
    sigmas = karras(method, steps)
    x_max = noise() * sigmas[0]
    options = {"s_churn": churn} if churn else {}
    expected = SOLVERS[method.default_solver].function(gaussian_denoiser, x_max, sigmas, noise, **options)
    torch.testing.assert_close(samples, expected, rtol=1e-4, atol=1e-4)
    if method.default_solver == "dpmpp_2m_karras":
        assert (samples - MU).abs().max() < 5 * STD  # in range at 5 steps (the lower-order final step)


@pytest.mark.parametrize(
    ("build", "churn"),
    [
        (lambda: EDM(clip_denoised=False, default_solver="heun"), 0.0),
        (lambda: EDM(clip_denoised=False, default_solver="heun"), 40.0),
        (lambda: EDM(clip_denoised=False, default_solver="dpmpp_2m_karras"), 0.0),
        (lambda: gaussian_method(linear_betas, "dpmpp_2m_karras", clip_denoised=False), 0.0),
    ],
)
def test_samples_of_the_optimal_gaussian_denoiser_have_its_mean_and_variance(build, churn):
    """4000 samples of N(MU, STD^2) at 64 steps (the variance's solver bias is ~3% at 32 steps, ~1% at 64)."""
    method = build()
    samples = gaussian_sampler(method, 64, s_churn=churn).sample().samples
    assert (samples.mean(0) - MU).abs().max() < 0.03  # standard error 0.005
    assert (samples.var(0) / STD**2 - 1).abs().max() < 0.08  # standard error 0.022


# ---------------------------------------------------------------------------------------------------------
# DDPM view, NFE, the sampler's options
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prediction", ["epsilon", "x0", "v"])
def test_ddpm_view_denoiser_agrees_with_predict_x0_at_schedule_timesteps(prediction):
    """At sigma = sigma_t the denoiser feeds x_t and the integer t to the network and returns predict_x0."""
    method = gaussian_method(linear_betas, "heun", num_timesteps=100, prediction=prediction, clip_denoised=False)
    torch.manual_seed(0)
    x0, noise, t = torch.randn(3, 2), torch.randn(3, 2), 37
    x_t = method.q_sample(x0, torch.full((3,), t), noise)
    output = torch.randn(3, 2)
    sigma = method.sigmas[t].item()
    seen = {}

    def network(x_in, t_in):
        seen.update(x=x_in, t=t_in)
        return output

    denoised = method.denoise(network, x_t * math.sqrt(1 + sigma**2), sigma)
    torch.testing.assert_close(seen["x"], x_t, rtol=1e-5, atol=1e-6)
    assert torch.equal(seen["t"], torch.full((3,), float(t)))  # exactly the schedule's timestep
    torch.testing.assert_close(denoised, method.predict_x0(x_t, t, output), rtol=1e-5, atol=1e-5)


def test_sigma_to_t_interpolates_log_sigma_between_timesteps():
    method = gaussian_method(linear_betas, "euler", num_timesteps=50)
    log_sigmas = method.sigmas.log()
    assert method.sigma_to_t(method.sigma_min) == 0 and method.sigma_to_t(method.sigma_max) == 49
    midway = math.exp(float(log_sigmas[10] + log_sigmas[11]) / 2)
    assert method.sigma_to_t(midway) == pytest.approx(10.5)


class CountingNetwork(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        self.calls += 1
        return torch.zeros_like(x)


@pytest.mark.parametrize(("solver", "steps", "nfe"), [("heun", 18, 35), ("euler", 7, 7), ("dpmpp_2m_karras", 5, 5)])
def test_reported_nfe_counts_network_calls(solver, steps, nfe):
    network = CountingNetwork()
    sampler = Sampler(network, EDM(), (2,), solver=solver, num_samples=3, steps=steps, device="cpu")
    result = sampler.sample()
    assert result.nfe == network.calls == nfe and SOLVERS[solver].nfe(steps) == nfe
    for gaussian_solver, gaussian_nfe in (("ddim", 10), ("dpm_solver", 10), ("ddpm", 100), (solver, nfe)):
        method = gaussian_method(linear_betas, gaussian_solver, num_timesteps=100)
        sampler = Sampler(CountingNetwork(), method, (2,), num_samples=3, steps=steps if gaussian_solver == solver
                          else 10, device="cpu")
        assert sampler.sample().nfe == gaussian_nfe == sampler.model.calls


def test_solvers_a_method_cannot_take_are_refused_naming_sampler_solver():
    """EDM offers no discrete schedule; Karras sigmas need a finite sigma_max; bad options name their key."""
    edm = EDM()
    with pytest.raises(ConfigError, match="sampler.solver"):
        Sampler(CountingNetwork(), edm, (2,), solver="ddim", device="cpu")
    with pytest.raises(ConfigError, match="sampler.solver"):
        EDM(default_solver="rk4")
    zero_snr = gaussian_method(partial(linear_betas, zero_terminal_snr=True), "ddim", prediction="v")
    with pytest.raises(ConfigError, match="zero_terminal_snr"):
        Sampler(CountingNetwork(), zero_snr, (2,), solver="heun", device="cpu")
    with pytest.raises(ConfigError, match="sampler.s_churn"):
        Sampler(CountingNetwork(), edm, (2,), s_churn=-1.0, device="cpu")


def test_sampling_is_seeded_and_trajectory_frames_are_labelled_by_step():
    method = EDM(default_solver="heun", clip_denoised=False)
    run = lambda: gaussian_sampler(method, 6, s_churn=10.0).sample(num_samples=16, record_timesteps=[5, 2, -1])
    first, second = run(), run()
    assert torch.equal(first.samples, second.samples)
    assert sorted(first.trajectory) == [-1, 2, 5] and torch.equal(first.trajectory[-1], first.samples[:8])
    assert first.trajectory[5].std() < 2  # x / sqrt(1 + sigma^2): the data's scale, not sigma_max's


# ---------------------------------------------------------------------------------------------------------
# Autoguidance inside the denoiser
# ---------------------------------------------------------------------------------------------------------
class ConstantNetwork(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return torch.full_like(x, self.value)


def test_autoguidance_arithmetic():
    main, guide = torch.randn(4, 3), torch.randn(4, 3)
    torch.testing.assert_close(autoguided_output(main, guide, 2.5), guide + 2.5 * (main - guide))
    assert torch.equal(autoguided_output(main, guide, 1.0), main)
    assert torch.equal(autoguided_output(main, guide, 0.0), guide)
    with pytest.raises(ConfigError, match="sampler.guide_scale"):
        autoguided_output(main, guide, math.nan)


@pytest.mark.parametrize("method", [lambda: EDM(), lambda: gaussian_method(linear_betas, "ddim", num_timesteps=100)])
def test_sampler_guide_scale_one_is_the_main_model_and_scale_w_extrapolates(method):
    main, guide = ConstantNetwork(0.3), ConstantNetwork(-0.1)
    build = lambda **kw: Sampler(main, method(), (2,), num_samples=4, steps=4, device="cpu", **kw)
    x, t = torch.randn(4, 2), torch.full((4,), 3.0)
    assert torch.equal(build(guide_model=guide, guide_scale=1.0)._model_output(x, t, None), main(x, t))
    guided = build(guide_model=guide, guide_scale=3.0)._model_output(x, t, None)
    torch.testing.assert_close(guided, torch.full_like(x, -0.1 + 3.0 * 0.4))
    plain = build().sample().samples
    assert torch.equal(build(guide_model=guide, guide_scale=1.0).sample().samples, plain)
    assert not torch.equal(build(guide_model=guide, guide_scale=2.0).sample().samples, plain)
    with pytest.raises(ConfigError, match="sampler.guide"):
        build(guide="runs/small")

"""Flow matching in closed form: the affine paths and the exact conversions between predictions, the training-time
distributions and SD3's shift, the minibatch OT coupling, guidance on the velocity, every solver on Gaussian data
whose ODE map is known (with its order), and the one-line errors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from gaussian_flow import GaussianOracle, ode_map

from diffusion.methods import FlowMatching
from diffusion.methods.flow_matching import FLOW_PREDICTIONS, PATHS
from diffusion.runtime.checks import ConfigError
from diffusion.sampling.grids import build_grid
from diffusion.sampling.sampler import Sampler

MU, S = 0.7, 0.4


def path_sample(method: FlowMatching, batch: int = 64) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    y, n = torch.randn(batch, 3, generator=gen, dtype=torch.float64), torch.randn(batch, 3, generator=gen,
                                                                                  dtype=torch.float64)
    t = torch.rand(batch, generator=gen, dtype=torch.float64) * 0.9 + 0.05
    _, _, d_alpha, d_sigma = method.path_coefficients(t)
    return y, n, t, method.q_sample(y, t, n), d_alpha[:, None] * y + d_sigma[:, None] * n


@pytest.mark.parametrize("path", PATHS)
def test_every_prediction_converts_exactly_into_every_other_and_back(path):
    method = FlowMatching(path)
    y, n, t, x_t, u = path_sample(method)
    truth = {"velocity": u, "x0": y, "noise": n}
    for source, target in itertools.permutations(FLOW_PREDICTIONS, 2):
        converted = method.convert(truth[source], source, target, x_t, t)
        torch.testing.assert_close(converted, truth[target], rtol=0, atol=1e-6, msg=f"{path}: {source}->{target}")
    there_and_back = method.convert(method.convert(method.convert(u, "velocity", "x0", x_t, t), "x0", "noise", x_t,
                                                   t), "noise", "velocity", x_t, t)
    torch.testing.assert_close(there_and_back, u, rtol=0, atol=1e-6)


@pytest.mark.parametrize("path", PATHS)
def test_paths_run_from_noise_to_data_with_their_derivatives(path):
    method = FlowMatching(path)
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    alpha, sigma, d_alpha, d_sigma = method.path_coefficients(t)
    h = 1e-6
    a_plus, s_plus, _, _ = method.path_coefficients(t + h)
    a_minus, s_minus, _, _ = method.path_coefficients(t - h)
    torch.testing.assert_close(d_alpha, (a_plus - a_minus) / (2 * h), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(d_sigma, (s_plus - s_minus) / (2 * h), rtol=1e-5, atol=1e-6)
    end_alpha, end_sigma, _, _ = method.path_coefficients(torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert end_alpha[1] == 1 and end_sigma[1] < 1e-12 and end_alpha[0] < 0.01 and end_sigma[0] > 0.99
    if path == "linear":
        torch.testing.assert_close(alpha, t) and torch.testing.assert_close(sigma, 1 - t)
    if path != "linear":  # variance preserving
        torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(t))


@pytest.mark.parametrize("path", PATHS)
def test_the_sigma_space_denoiser_of_the_exact_network_is_the_posterior_mean(path):
    method = FlowMatching(path, clip_denoised=False)
    oracle = GaussianOracle(method, MU, S)
    x_t = torch.randn(8, 2, dtype=torch.float64)
    for t in (0.1, 0.5, 0.9):
        sigma = method.sigma_of_time(t)
        assert method.time_of_sigma(sigma) == pytest.approx(t, abs=1e-9)
        alpha = float(method.path_coefficients(t)[0])
        expected, _ = oracle.posterior(x_t, torch.full((8,), t, dtype=torch.float64))
        torch.testing.assert_close(method.denoise(oracle, x_t / alpha, sigma), expected, atol=1e-9, rtol=0)


def test_training_times_follow_sd3_and_validation_takes_their_quantiles():
    torch.manual_seed(0)
    draws = FlowMatching(time_sampling="logit_normal", m=0.5, s=0.8).training_times(None, 200_000, "cpu")
    logits = torch.logit(1 - draws)  # 1 - t = sigmoid(m + s z)
    assert abs(logits.mean() - 0.5) < 0.01 and abs(logits.std() - 0.8) < 0.01
    uniform = FlowMatching(time_sampling="mode", scale=0.0).training_times(None, 200_000, "cpu")
    assert abs(uniform.mean() - 0.5) < 0.01 and abs(uniform.var() - 1 / 12) < 0.002
    for sampling in ("uniform", "logit_normal", "mode"):
        method = FlowMatching(time_sampling=sampling, num_timesteps=50)
        quantiles = method.training_times(torch.arange(50), 50, "cpu")
        assert (quantiles.diff() > 0).all() and 0 < quantiles.min() and quantiles.max() < 1, sampling


def test_shift_moves_the_sampling_times_towards_the_noise_as_sd3():
    times = FlowMatching(shift=3.0).sampling_times(4)
    sd3 = [3 * u / (1 + 2 * u) for u in (1.0, 0.75, 0.5, 0.25, 0.0)]  # SD3's noise level, shifted
    assert times == pytest.approx([1 - u for u in sd3], abs=1e-12)
    assert FlowMatching().sampling_times(4) == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])


def test_ot_coupling_is_the_exact_least_cost_permutation():
    torch.manual_seed(0)
    method = FlowMatching(coupling="ot")
    y, n = torch.randn(6, 2), torch.randn(6, 2)
    paired = method.couple(y, n)
    assert sorted(map(tuple, paired.tolist())) == sorted(map(tuple, n.tolist()))
    best = min(((y - n[list(p)]) ** 2).sum().item() for p in itertools.permutations(range(6)))
    assert ((y - paired) ** 2).sum().item() == pytest.approx(best, rel=1e-6)
    assert FlowMatching().couple(y, n) is n


def test_label_dropout_and_guidance_act_on_the_velocity():
    class Conditional(torch.nn.Module):
        num_classes = 3

        def forward(self, x, t, y=None):
            self.seen = y
            return x * 0 + y.float()[:, None]  # velocity = the label

    method, net = FlowMatching(cond_drop_prob=1.0), Conditional()
    method.compute_loss(net.train(), torch.randn(4, 2), y=torch.tensor([0, 1, 2, 0]))
    assert net.seen.tolist() == [3, 3, 3, 3]
    sampler = Sampler(net, method, (2,), solver="euler", steps=1, num_samples=3, device="cpu", guidance_scale=2.0,
                      class_labels=[1])
    result = sampler.sample()  # x_1 = n + uncond + 2 (cond - uncond) = n + 3 + 2 (1 - 3): the null label is 3
    start = Sampler(net, method, (2,), solver="euler", steps=1, num_samples=3, device="cpu", guidance_scale=0.0,
                    class_labels=[1]).sample().samples  # n + 3
    torch.testing.assert_close(result.samples, start - 4.0)


def test_autoguidance_extrapolates_the_velocity_from_a_weaker_guide():
    method = FlowMatching(clip_denoised=False)
    # One Euler step from t = 0: u(n, 0) = mu - n for the exact network of N(mu, s^2), so x_1 = mu.
    guided = Sampler(GaussianOracle(method, 0.5, S), method, (2,), solver="euler", steps=1, num_samples=4,
                     device="cpu", guide_model=GaussianOracle(method, 0.0, S), guide_scale=2.0).sample().samples
    torch.testing.assert_close(guided, torch.full((4, 2), 1.0))  # 0 + 2 (0.5 - 0)


ORDERS = {"euler": 1, "heun": 2, "midpoint": 2}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("solver", ["euler", "heun", "midpoint"])
def test_fixed_step_solvers_converge_to_the_exact_ode_map_at_their_order(path, solver):
    method = FlowMatching(path, clip_denoised=False)
    errors = []
    for steps in (16, 32):
        sampler = Sampler(GaussianOracle(method, MU, S), method, (4,), solver=solver, steps=steps, num_samples=64,
                          device="cpu")
        n = torch.cat([sampler_noise(sampler, i) for i in range(64)])
        errors.append((sampler.sample().samples - ode_map(method, n, MU, S)).abs().max().item())
    assert errors[1] < errors[0] * 2 ** -ORDERS[solver] * 1.5 and errors[1] < 0.07, (path, solver, errors)


@pytest.mark.parametrize("solver, meta", [("euler", "euler"), ("midpoint", "midpoint")])
def test_fixed_step_solvers_match_metas_ode_solver(solver, meta):
    from flow_matching.solver import ODESolver

    method = FlowMatching("cosine", clip_denoised=False)
    oracle = GaussianOracle(method, MU, S)
    sampler = Sampler(oracle, method, (3,), solver=solver, steps=10, num_samples=8, device="cpu")
    start = torch.cat([sampler_noise(sampler, i) for i in range(8)]).float()

    class Velocity(torch.nn.Module):
        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return oracle(x, (t * method.num_timesteps).reshape(1).expand(x.shape[0]))

    reference = ODESolver(Velocity()).sample(start, step_size=0.1, method=meta, time_grid=torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(sampler.sample().samples, reference, atol=1e-5, rtol=0)


def sampler_noise(sampler: Sampler, index: int) -> torch.Tensor:
    """The initial noise of sample ``index`` (the first draw of its stream)."""
    from diffusion.sampling.noise import SampleNoise

    return SampleNoise(sampler.seed, range(index, index + 1), sampler.sample_shape, sampler.device)().double()


@pytest.mark.parametrize("prediction", FLOW_PREDICTIONS)
def test_dopri5_meets_its_tolerance_and_reports_the_evaluations_it_used(prediction):
    method = FlowMatching("cosine", prediction, clip_denoised=False)
    oracle = GaussianOracle(method, MU, S)
    sampler = Sampler(oracle, method, (4,), solver="dopri5", num_samples=16, device="cpu", atol=1e-6, rtol=1e-6)
    result = sampler.sample()
    n = torch.cat([sampler_noise(sampler, i) for i in range(16)])
    exact = ode_map(method, n, MU, S, method.start_time)
    assert (result.samples - exact).abs().max() < 2e-3
    assert result.nfe == oracle.calls > 6


def test_euler_maruyama_samples_the_data_distribution_and_zero_diffusion_is_the_ode():
    method = FlowMatching(clip_denoised=False)
    samples = Sampler(GaussianOracle(method, MU, S), method, (1,), solver="euler_maruyama", steps=100,
                      num_samples=4000, batch_size=4000, device="cpu", diffusion=1.0).sample().samples
    assert abs(samples.mean() - MU) < 0.03 and abs(samples.std() - S) < 0.03
    ode = Sampler(GaussianOracle(method, MU, S), method, (1,), solver="euler", steps=20, num_samples=8,
                  device="cpu").sample().samples
    no_noise = Sampler(GaussianOracle(method, MU, S), method, (1,), solver="euler_maruyama", steps=20, num_samples=8,
                       device="cpu", diffusion=0.0).sample().samples
    torch.testing.assert_close(no_noise, ode)


def test_the_gaussian_solvers_sample_a_flow_through_its_sigma_space():
    method = FlowMatching(clip_denoised=False)
    for solver, bound in (("ddim", 0.07), ("dpm_solver", 0.015), ("dpmpp_2m_karras", 0.03)):  # first, second order
        sampler = Sampler(GaussianOracle(method, MU, S), method, (4,), solver=solver, steps=30, num_samples=32,
                          device="cpu", timestep_spacing="trailing")
        n = torch.cat([sampler_noise(sampler, i) for i in range(32)])
        start = build_grid(method, "karras", 30, "trailing").sigmas[0] if solver.endswith("karras") else math.inf
        t0 = method.time_of_sigma(start)
        error = (sampler.sample().samples - ode_map(method, n, MU, S, t0)).abs().max()
        assert error < bound, (solver, error)


@pytest.mark.parametrize("override, key", [
    ({"path": "straight"}, "method.path"), ({"prediction": "v"}, "method.prediction"),
    ({"time_sampling": "beta"}, "method.time_sampling"), ({"coupling": "sinkhorn"}, "method.coupling"),
    ({"shift": 0.0}, "method.shift"), ({"shift": -1.0}, "method.shift"), ({"scale": 3.0}, "method.scale"),
    ({"s": 0.0}, "method.s"), ({"default_solver": "consistency"}, "sampler.solver"),
])
def test_a_bad_method_setting_is_one_line_naming_its_key(override, key):
    with pytest.raises(ConfigError, match=key) as error:
        FlowMatching(**override)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("override, key", [
    ({"solver": "rk4"}, "sampler.solver"), ({"steps": 0}, "sampler.steps"), ({"atol": 0.0}, "sampler.atol"),
    ({"rtol": -1e-3}, "sampler.rtol"), ({"diffusion": -1.0}, "sampler.diffusion"),
])
def test_a_bad_sampler_setting_for_a_flow_is_one_line_naming_its_key(override, key):
    with pytest.raises(ConfigError, match=key) as error:
        Sampler(GaussianOracle(FlowMatching(), MU, S), FlowMatching(), (2,), device="cpu", **override)
    assert "\n" not in str(error.value)

"""DPM-Solver++(2M), min-SNR loss weighting, zero-terminal-SNR schedules and classifier-free guidance.

The solver tests use an analytic model: data x0 ~ N(mu, s^2 I), for which every prediction at (x_t, t) is known
in closed form, and so is the probability-flow ODE solution: the ODE maps the marginal N(alpha_t mu, V_t I),
V_t = alpha_t^2 s^2 + sigma_t^2, to the data monotonically per coordinate, so it keeps the standard score
z = (x_t - alpha_t mu) / sqrt(V_t); from x at the first visited step it ends at x0 = mu + s z.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffusion.methods import PREDICTIONS, GaussianDiffusion
from diffusion.methods.base import drop_labels, vp_scale
from diffusion.sampling.grids import build_grid
from diffusion.sampling.guidance import guided_output
from diffusion.sampling.sampler import SampleNoise, Sampler
from diffusion.sampling.solvers import SOLVERS, ddim, dpmpp_2m
from diffusion.methods.schedules import (
    cosine_betas,
    linear_betas,
    rescale_zero_terminal_snr,
    sigmoid_betas,
)
from diffusion.runtime.checks import ConfigError

SCHEDULES = {"linear": linear_betas, "cosine": cosine_betas, "sigmoid": sigmoid_betas}
MU, S = 0.5, 0.5


class GaussianOracle(nn.Module):
    """The exact network for data N(mu, s^2 I) under ``method``'s schedule and prediction target."""

    def __init__(self, method: GaussianDiffusion, mu: float = MU, s: float = S) -> None:
        super().__init__()
        self.method, self.mu, self.s = method, mu, s

    def forward(self, x: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        t = torch.as_tensor(t).long().expand(x.shape[0])  # the schedule grids visit whole timesteps
        abar = self.method.alphas_cumprod[t].to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
        deviation = (x - alpha * self.mu) / (abar * self.s**2 + 1 - abar)  # (x_t - alpha mu) / V_t
        eps = sigma * deviation
        x0 = self.mu + alpha * self.s**2 * deviation  # posterior mean E[x0 | x_t]
        return {"epsilon": eps, "x0": x0, "v": alpha * eps - sigma * x0}[self.method.prediction]


def exact_ode_solution(method: GaussianDiffusion, x_start: torch.Tensor, t_start: int) -> torch.Tensor:
    abar = method.alphas_cumprod[t_start]
    return MU + S * (x_start - abar.sqrt() * MU) / (abar * S**2 + 1 - abar).sqrt()


def solve(method: GaussianDiffusion, x: torch.Tensor, steps: int, spacing="trailing", eta=0.0, seed=0, keep=False):
    """The sampler's loop with the method's default solver from x_T = ``x`` on the oracle, in the caller's dtype;
    ``keep`` returns every iterate x_t (variance-preserving scale)."""
    solver, oracle = SOLVERS[method.default_solver], GaussianOracle(method)
    grid = build_grid(method, solver.grid, None if solver.default_steps is None else steps, spacing)
    generator, iterates = torch.Generator().manual_seed(seed), []
    noise = lambda: torch.randn(x.shape, generator=generator, dtype=x.dtype)  # noqa: E731
    options = {"eta": eta} if "eta" in solver.options else {}
    out = solver.function(lambda x_, sigma: method.denoise(oracle, x_, sigma), x * grid.start_scale, grid.sigmas,
                          noise, lambda i, x_: iterates.append(x_ * vp_scale(grid.sigmas[i])), **options)
    return [*iterates, out] if keep else out


def forced_steps(method: GaussianDiffusion, steps: int, outputs: list[torch.Tensor], reference: list[torch.Tensor]
                 ) -> list[torch.Tensor]:
    """Our DPM-Solver++(2M) steps on the ``trailing`` grid, each taken from the reference's own iterate
    ``reference[i]`` (x_t scale) with network output ``outputs[i]``: returns our x after each step."""
    grid = build_grid(method, "schedule", steps, "trailing")
    calls, got = iter(outputs), []

    def force(i: int, x: torch.Tensor) -> None:
        if i:
            got.append(x * vp_scale(grid.sigmas[i]))
            x.copy_(reference[i] / vp_scale(grid.sigmas[i]))

    denoise = lambda x, sigma: method.denoise(lambda x_t, t: next(calls), x, sigma)  # noqa: E731
    got.append(dpmpp_2m(denoise, reference[0] * grid.start_scale, grid.sigmas, lambda: None, force))
    return got


def rms(x: torch.Tensor) -> float:
    return x.pow(2).mean().sqrt().item()


def make(solver, schedule="linear", prediction="epsilon", ztsnr=False, **kwargs):
    return GaussianDiffusion(partial(SCHEDULES[schedule], zero_terminal_snr=ztsnr), num_timesteps=1000,
                             prediction=prediction, clip_denoised=False, default_solver=solver, **kwargs)


@pytest.fixture(scope="module")
def x_T() -> torch.Tensor:
    return torch.randn(512, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------------------------------------
# DPM-Solver++(2M)
# ---------------------------------------------------------------------------------------------------------
def test_dpm_solver_is_deterministic_and_first_order_is_ddim(x_T):
    # Restarted at every step, each step is DPM-Solver++1, which is DDIM with eta = 0 (Lu et al. 2022b, Sec. 4.1).
    dpm = make("dpm_solver", "cosine")
    oracle, grid = GaussianOracle(dpm), build_grid(dpm, "schedule", 20, "trailing")
    denoise = lambda x, sigma: dpm.denoise(oracle, x, sigma)  # noqa: E731
    x_dpm = x_T * grid.start_scale
    for i in range(len(grid.labels)):
        x_dpm = dpmpp_2m(denoise, x_dpm, grid.sigmas[i : i + 2], lambda: None)
    x_ddim = ddim(denoise, x_T * grid.start_scale, grid.sigmas, lambda: None)
    assert (x_dpm - x_ddim).abs().max().item() < 1e-12
    assert torch.equal(solve(dpm, x_T, 20), solve(dpm, x_T, 20))


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_dpm_solver_converges_to_the_ode_solution_and_to_ddim(schedule, x_T):
    # Measured RMS errors against the exact ODE solution (mu = s = 0.5, 512 samples, trailing spacing):
    #   steps              10      20      50      200     1000
    #   linear  DDIM       1.3e-1  6.9e-2  2.9e-2  7.4e-3  1.5e-3
    #           DPM++(2M)  9.5e-2  2.2e-2  5.4e-4  2.1e-4  3.7e-5
    #   cosine  DDIM       7.3e-2  3.8e-2  1.6e-2  4.0e-3  8.1e-4
    #           DPM++(2M)  2.5e-2  1.5e-3  7.1e-4  8.3e-6  2.3e-5
    # DDIM with all 1000 steps still carries its first-order error from the last, long steps in lambda (near
    # t = 0 one step spans ~0.4 in lambda), so DPM++(200) agrees with DDIM(1000) to about DDIM's own error:
    # 1.7e-3 (linear), 8.2e-4 (cosine).
    plain, dpm = make("ddim", schedule), make("dpm_solver", schedule)
    exact = exact_ode_solution(plain, x_T, 999)
    error = {(name, n): rms(solve(m, x_T, n) - exact) for name, m in (("ddim", plain), ("dpm", dpm))
             for n in (10, 20, 50, 200)}
    ddim_full = solve(plain, x_T, 1000)
    assert rms(ddim_full - exact) < 2e-3
    assert error["dpm", 200] < 5e-4
    assert rms(solve(dpm, x_T, 200) - ddim_full) < 2.5e-3
    assert error["dpm", 10] < error["ddim", 10] / 1.25
    assert error["dpm", 20] < error["ddim", 20] / 2.5
    assert error["dpm", 20] < error["ddim", 50]  # 20 DPM++ steps beat 50 DDIM steps
    assert error["dpm", 10] > error["dpm", 20] > error["dpm", 50] > error["dpm", 200]


def test_dpm_solver_second_step_uses_the_previous_prediction(x_T):
    dpm = make("dpm_solver")
    oracle, grid = GaussianOracle(dpm), build_grid(dpm, "schedule", 10, "trailing")
    denoise = lambda x, sigma: dpm.denoise(oracle, x, sigma)  # noqa: E731
    x = x_T * grid.start_scale
    second = dpmpp_2m(denoise, x, grid.sigmas[:3], lambda: None)
    restarted = dpmpp_2m(denoise, dpmpp_2m(denoise, x, grid.sigmas[:2], lambda: None), grid.sigmas[1:3], lambda: None)
    assert not torch.allclose(second, restarted), "the second step must use the stored prediction"


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_dpm_solver_last_step_returns_the_denoised_prediction(prediction):
    dpm = make("dpm_solver", prediction=prediction)
    x, out = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    sigma = dpm.sigmas[4].item()
    got = dpmpp_2m(lambda x_, s: dpm.denoise(lambda *_: out, x_, s), x, [sigma, 0.0], lambda: None)
    assert torch.equal(got, dpm.denoise(lambda *_: out, x, sigma))
    assert torch.allclose(got, dpm.predict_x0(x * vp_scale(sigma), 4, out), atol=1e-12)  # the x0 at t = 4
    clipped = GaussianDiffusion(linear_betas, prediction="x0", clip_denoised=True)
    last = dpmpp_2m(lambda x_, s: clipped.denoise(lambda *_: torch.tensor([[3.0, -0.5]]), x_, s), torch.zeros(1, 2),
                    [clipped.sigma_min, 0.0], lambda: None)
    assert torch.equal(last, torch.tensor([[1.0, -0.5]]))


def test_sampler_drives_dpm_solver_with_a_fresh_state_per_batch(x_T):
    dpm = GaussianDiffusion(cosine_betas, num_timesteps=1000, clip_denoised=False, default_solver="dpm_solver")
    sampler = Sampler(GaussianOracle(dpm), dpm, (1,), num_samples=6, batch_size=3, steps=15,
                      timestep_spacing="trailing", seed=3, device="cpu")
    samples = sampler.sample().samples
    x = SampleNoise(3, range(3), (1,))()  # the sampler's first batch of noise (per-sample streams of seed 3)
    assert torch.allclose(samples[:3], solve(dpm, x, 15), atol=1e-6)


@pytest.mark.parametrize(("solver", "eta"), [("ddpm", 1.0), ("ddim", 0.0), ("ddim", 0.5)])
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("clip", [False, True])
def test_sigma_space_ddpm_and_ddim_are_the_discrete_steps(solver, eta, prediction, clip):
    """The ddpm and ddim solvers step x = x_t / sqrt(abar_t) with D(x; sigma_t); the discrete steps (p_sample,
    ddim_step) step x_t itself. Same network, same noise draws: the same trajectory up to float64 rounding."""
    method = GaussianDiffusion(cosine_betas, num_timesteps=50, prediction=prediction, clip_denoised=clip,
                               default_solver=solver)
    network = lambda x_t, t: torch.tanh(0.7 * x_t + t.double()[:, None] / 50)  # noqa: E731 - any (x_t, t) function
    generator = torch.Generator().manual_seed(0)
    x_T = torch.randn(16, 2, generator=generator, dtype=torch.float64)
    draws = [torch.randn(16, 2, generator=generator, dtype=torch.float64) for _ in range(50)]
    grid = build_grid(method, "schedule", None if solver == "ddpm" else 10, "trailing")
    x = x_T
    for i, t in enumerate(grid.labels):
        output, t_prev = network(x, torch.full((16,), t)), (grid.labels[i + 1] if i + 1 < len(grid.labels) else -1)
        x = (method.p_sample(x, t, output, draws[i]) if solver == "ddpm"
             else method.ddim_step(x, t, t_prev, output, eta=eta, noise=draws[i]))
    noise = iter(draws).__next__
    options = {"eta": eta} if solver == "ddim" else {}
    got = SOLVERS[solver].function(lambda x_, sigma: method.denoise(network, x_, sigma), x_T * grid.start_scale,
                                   grid.sigmas, noise, **options)
    assert (got - x).abs().max().item() < 1e-10


# ---------------------------------------------------------------------------------------------------------
# Agreement with the reference DPMSolverMultistepScheduler
# ---------------------------------------------------------------------------------------------------------
diffusers = pytest.importorskip("diffusers")
REFERENCE_PREDICTION = {"epsilon": "epsilon", "x0": "sample", "v": "v_prediction"}
REFERENCE_SCHEDULE = {"linear": "linear", "cosine": "squaredcos_cap_v2"}


def reference_solver(schedule: str, prediction: str, steps: int):
    # final_sigmas_type="zero": the last step goes to sigma = 0 with a first-order update, as ours does.
    ref = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000, beta_schedule=REFERENCE_SCHEDULE[schedule], algorithm_type="dpmsolver++",
        solver_order=2, solver_type="midpoint", prediction_type=REFERENCE_PREDICTION[prediction],
        timestep_spacing="trailing", final_sigmas_type="zero", lower_order_final=True,
    )
    ref.set_timesteps(steps)
    return ref


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the reference's own NumPy 2 warning
@pytest.mark.parametrize("schedule", REFERENCE_SCHEDULE)
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_dpm_solver_steps_match_reference_float32(schedule, prediction):
    # The reference runs its own step() (order switching included) in float32 from float32 sigmas; ours keeps
    # float64 coefficients. Random outputs with epsilon prediction imply x0 ~ 1e4 at t = 999 (x0 = (x_t - sigma
    # eps) / alpha), so the difference is measured relative to the sample's scale: at most 7e-6 (cosine, epsilon),
    # 1e-6 otherwise.
    steps = 8
    ref, ours = reference_solver(schedule, prediction, steps), make("dpm_solver", schedule, prediction)
    assert build_grid(ours, "schedule", steps, "trailing").labels == ref.timesteps.tolist()
    generator = torch.Generator().manual_seed(0)
    reference, outputs = [torch.randn(2, 3, 4, 4, generator=generator)], []
    for t in ref.timesteps.tolist():  # the reference's own trajectory: each step from its previous iterate
        outputs.append(torch.randn(reference[-1].shape, generator=generator))
        reference.append(ref.step(outputs[-1], t, reference[-1]).prev_sample)
    for t, got, expected in zip(ref.timesteps.tolist(), forced_steps(ours, steps, outputs, reference), reference[1:]):
        difference = (got - expected).abs().max().item() / (1 + expected.abs().max().item())
        assert difference < 3e-5, (t, difference)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_dpm_solver_formulas_match_reference_float64(prediction):
    # The reference's first- and second-order updates, called in float64 with sigmas from our schedule, with
    # first order on the first and last steps as its step() does (lower_order_final and final sigma 0).
    steps = 12
    ref, ours = reference_solver("cosine", prediction, steps), make("dpm_solver", "cosine", prediction)
    timesteps = build_grid(ours, "schedule", steps, "trailing").labels
    abar = ours.alphas_cumprod
    ref.sigmas = torch.cat([((1 - abar) / abar).sqrt()[timesteps], abar.new_zeros(1)])
    generator, outputs, converted = torch.Generator().manual_seed(1), [], []
    reference = [torch.randn(2, 1, 8, 8, generator=generator, dtype=torch.float64)]
    for i in range(steps):
        x = reference[-1]
        outputs.append(torch.randn(x.shape, generator=generator, dtype=torch.float64))
        ref._step_index = i
        converted.append(ref.convert_model_output(outputs[-1], sample=x))
        if i == 0 or i == steps - 1:
            reference.append(ref.dpm_solver_first_order_update(converted[-1], sample=x))
        else:
            reference.append(ref.multistep_dpm_solver_second_order_update(converted[-2:], sample=x))
    for t, got, expected in zip(timesteps, forced_steps(ours, steps, outputs, reference), reference[1:]):
        difference = (got - expected).abs().max().item() / (1 + expected.abs().max().item())
        assert difference < 1e-12, (t, difference)  # measured <= 5e-16


# ---------------------------------------------------------------------------------------------------------
# Zero-terminal SNR
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SCHEDULES)
def test_rescaled_schedules_reach_zero_snr_and_keep_the_first_step(name):
    plain, rescaled = SCHEDULES[name](1000), SCHEDULES[name](1000, zero_terminal_snr=True)
    abar_plain, abar = torch.cumprod(1 - plain, 0), torch.cumprod(1 - rescaled, 0)
    assert rescaled.dtype == torch.float64 and rescaled.shape == (1000,)
    assert abar[-1].item() == 0.0 and rescaled[-1].item() == 1.0
    assert abs(abar[0].item() - abar_plain[0].item()) < 1e-12
    assert (abar[1:] < abar[:-1]).all() and (rescaled > 0).all()
    assert make("ddim", name, "v", ztsnr=True).alphas_cumprod[-1].item() == 0.0
    assert torch.allclose(rescaled, rescale_zero_terminal_snr(plain)) and not torch.allclose(rescaled, plain)


def test_rescale_matches_reference():
    from diffusers.schedulers.scheduling_ddim import (
        rescale_zero_terminal_snr as reference,
    )

    betas = linear_betas(1000)
    assert torch.allclose(rescale_zero_terminal_snr(betas), reference(betas.clone()), atol=1e-12, rtol=0)


def test_epsilon_prediction_with_zero_terminal_snr_is_refused():
    with pytest.raises(ConfigError, match="method.prediction=v"):
        make("ddpm", "cosine", "epsilon", ztsnr=True)
    with pytest.raises(ConfigError, match="method.num_timesteps"):
        rescale_zero_terminal_snr(linear_betas(1))


@pytest.mark.parametrize("solver", ["ddpm", "ddim", "dpm_solver"])
@pytest.mark.parametrize("prediction", ["v", "x0"])
def test_zero_terminal_snr_samples_stay_finite(solver, prediction):
    method = make(solver, "linear", prediction, ztsnr=True)
    for name in ("posterior_variance", "posterior_mean_coef1", "posterior_mean_coef2", "snr"):
        assert torch.isfinite(getattr(method, name)).all(), name
    x_T = torch.randn(256, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    iterates = solve(method, x_T, 25, keep=True)
    assert all(torch.isfinite(x).all() for x in iterates)
    if solver != "ddpm":
        # abar_T = 0: x_T carries no signal, z = x_T, and the ODE ends at mu + s x_T.
        assert rms(iterates[-1] - (MU + S * x_T)) < {"ddim": 0.1, "dpm_solver": 0.03}[solver]
    else:  # ancestral sampling: the right distribution
        assert abs(iterates[-1].mean().item() - MU) < 0.15 and abs(iterates[-1].std().item() - S) < 0.1


# ---------------------------------------------------------------------------------------------------------
# Min-SNR-gamma loss weighting
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("gamma", [1.0, 5.0])
def test_min_snr_weights_have_their_closed_form(prediction, gamma):
    method = make("ddpm", "cosine", prediction, loss_weighting="min_snr", snr_gamma=gamma)
    t = torch.tensor([0, 1, 50, 200, 500, 800, 999])
    abar = torch.cumprod(1 - cosine_betas(1000), 0)[t]
    snr = abar / (1 - abar)
    expected = {
        "epsilon": torch.minimum(snr, torch.tensor(gamma)) / snr,
        "x0": torch.minimum(snr, torch.tensor(gamma)),
        "v": torch.minimum(snr, torch.tensor(gamma)) / (snr + 1),
    }[prediction]
    assert torch.allclose(method.loss_weights(t), expected, rtol=1e-12, atol=0)
    assert torch.equal(make("ddpm", "cosine", prediction).loss_weights(t), torch.ones(len(t), dtype=torch.float64))


def test_min_snr_weights_are_one_weighting_in_x0_space():
    # Each target's weighted MSE is min(SNR, gamma) times the x0 MSE of the same network (Hang et al. 2023).
    x0, noise = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    t = torch.tensor([3, 100, 400, 700, 990])
    x0_hat = x0 + 0.1 * torch.randn_like(x0)
    losses = []
    for prediction in PREDICTIONS:
        method = make("ddim", "linear", prediction, loss_weighting="min_snr")
        x_t = method.q_sample(x0, t, noise)
        # The output that implies x0_hat at x_t: the target of the pair (x0_hat, eps_hat) that also gives x_t.
        eps_hat = (x_t - method.sqrt_alphas_cumprod[t, None] * x0_hat) / method.sqrt_one_minus_alphas_cumprod[t, None]
        output = method.training_target(x0_hat, t, eps_hat)
        error = (output - method.training_target(x0, t, noise)).pow(2).mean(1)
        losses.append(method.loss_weights(t) * error)
    assert torch.allclose(losses[0], losses[1], rtol=1e-8) and torch.allclose(losses[1], losses[2], rtol=1e-8)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_uniform_loss_is_unchanged_and_min_snr_weights_per_sample(prediction):
    torch.manual_seed(0)
    net = nn.Linear(4, 4)
    model = lambda x, t: net(x)  # noqa: E731
    x0, noise, t = torch.randn(16, 4), torch.randn(16, 4), torch.randint(0, 1000, (16,))
    uniform = make("ddpm", "cosine", prediction)
    target = uniform.training_target(x0, t, noise)
    output = model(uniform.q_sample(x0, t, noise), t)
    assert torch.equal(uniform.compute_loss(model, x0, t=t, noise=noise), F.mse_loss(output, target))
    weighted = make("ddpm", "cosine", prediction, loss_weighting="min_snr", snr_gamma=5.0)
    per_sample = (output - target).pow(2).mean(1)
    expected = (weighted.loss_weights(t).float() * per_sample).mean()
    assert torch.allclose(weighted.compute_loss(model, x0, t=t, noise=noise), expected, rtol=1e-6)


def test_invalid_new_method_arguments():
    with pytest.raises(ConfigError, match="method.loss_weighting"):
        make("ddpm", loss_weighting="snr")
    with pytest.raises(ConfigError, match="method.snr_gamma"):
        make("ddpm", loss_weighting="min_snr", snr_gamma=0.0)
    with pytest.raises(ConfigError, match="method.cond_drop_prob"):
        make("ddpm", cond_drop_prob=1.5)


# ---------------------------------------------------------------------------------------------------------
# Classifier-free guidance
# ---------------------------------------------------------------------------------------------------------
def test_guidance_endpoints_are_exact():
    cond, uncond = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    assert torch.equal(guided_output(cond, uncond, 1.0), cond)
    assert torch.equal(guided_output(cond, uncond, 0.0), uncond)
    assert torch.allclose(guided_output(cond, uncond, 3.0), uncond + 3.0 * (cond - uncond), atol=1e-6)
    with pytest.raises(ConfigError, match="sampler.guidance_scale"):
        guided_output(cond, uncond, float("nan"))


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_label_dropout_rate(p):
    n, null = 20000, 10
    y = torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(0))
    dropped = drop_labels(y, p, null, generator=torch.Generator().manual_seed(1))
    is_null = dropped == null
    assert abs(is_null.sum().item() - n * p) < 4 * (n * p * (1 - p)) ** 0.5  # binomial, 4 sigma
    assert torch.equal(dropped[~is_null], y[~is_null]) and dropped.dtype == y.dtype
    assert torch.equal(drop_labels(y, 0.0, null), y) and (drop_labels(y, 1.0, null) == null).all()
    with pytest.raises(ConfigError, match="method.cond_drop_prob"):
        drop_labels(y, -0.1, null)


class LabelRecorder(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes, self.seen = num_classes, []

    def forward(self, x, t, y=None):
        self.seen.append(y)
        return torch.zeros_like(x)


def test_compute_loss_drops_labels_in_training_only():
    method = make("ddpm", cond_drop_prob=0.3)
    model = LabelRecorder(num_classes=7)
    x0, y = torch.randn(4000, 2), torch.randint(0, 7, (4000,))
    method.compute_loss(model.train(), x0, y=y)
    fraction = (model.seen[-1] == 7).float().mean().item()
    assert abs(fraction - 0.3) < 4 * (0.3 * 0.7 / 4000) ** 0.5
    method.compute_loss(model.eval(), x0, y=y)
    assert torch.equal(model.seen[-1], y)
    method.compute_loss(model.train(), x0, y=y, null_label=99)  # an explicit null label, not passed on
    assert set(model.seen[-1].unique().tolist()) - set(range(7)) == {99}
    method.compute_loss(model.train(), x0)
    assert model.seen[-1] is None
    make("ddpm", cond_drop_prob=0.0).compute_loss(model.train(), x0, y=y)  # labels untouched
    assert torch.equal(model.seen[-1], y)


# ---------------------------------------------------------------------------------------------------------
# Config keys
# ---------------------------------------------------------------------------------------------------------
def test_new_keys_compose_and_reach_the_method():
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from diffusion.app.method_config import make_method

    overrides = ["method=dpm_solver", "schedule=cosine", "schedule.zero_terminal_snr=true", "method.prediction=v",
                 "method.loss_weighting=min_snr", "method.snr_gamma=3.0", "method.cond_drop_prob=0.2"]
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[2] / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    method = make_method(cfg.method)
    assert isinstance(method, GaussianDiffusion) and method.default_solver == "dpm_solver"
    assert method.alphas_cumprod[-1].item() == 0.0
    assert (method.loss_weighting, method.snr_gamma, method.cond_drop_prob) == ("min_snr", 3.0, 0.2)

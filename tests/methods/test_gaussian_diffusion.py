"""Closed-form checks of the schedules and of the Gaussian diffusion's DDPM/DDIM steps, and agreement with the
reference schedulers."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion.methods import PREDICTIONS, GaussianDiffusion
from diffusion.methods.schedules import cosine_betas, linear_betas, sigmoid_betas, spaced_timesteps
from diffusion.sampling.grids import build_grid
from diffusion.runtime.checks import ConfigError

SCHEDULES = {"linear": linear_betas, "cosine": cosine_betas, "sigmoid": sigmoid_betas}


def make(solver="ddim", schedule="linear", T=1000, prediction="epsilon", clip=False):
    return GaussianDiffusion(SCHEDULES[schedule], num_timesteps=T, prediction=prediction, clip_denoised=clip,
                             default_solver=solver)


def timestep_pairs(method, steps, spacing):
    """(t, t_prev) of a DDIM trajectory, t_prev = -1 after the last step."""
    sequence = spaced_timesteps(method.num_timesteps, steps, spacing)
    return list(zip(sequence, sequence[1:] + [-1]))


# ---------------------------------------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_is_valid(name):
    betas = SCHEDULES[name](1000)
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    assert (betas > 0).all() and (betas < 1).all()
    abar = torch.cumprod(1 - betas, 0)
    assert (abar[1:] < abar[:-1]).all(), "abar must decrease"
    assert abar[0] > 0.99 and abar[-1] < 1e-3


def test_linear_endpoints():
    betas = linear_betas(1000)
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)


def test_cosine_matches_closed_form():
    T, s = 1000, 0.008
    abar = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    betas = cosine_betas(T, s=s)
    for i in (0, 1, 500, 998):
        assert betas[i].item() == pytest.approx(min(1 - abar((i + 1) / T) / abar(i / T), 0.999), rel=1e-12)
    assert betas[-1].item() == 0.999  # clipped


def test_sigmoid_abar_endpoints():
    abar = torch.cumprod(1 - sigmoid_betas(1000), 0)
    assert abar[0].item() == pytest.approx(1.0, abs=1e-3)
    assert abar[-1].item() < 1e-3


def test_bad_schedule_parameters():
    with pytest.raises(ConfigError, match="schedule.beta_end"):
        linear_betas(10, beta_start=0.1, beta_end=0.01)
    with pytest.raises(ConfigError, match="schedule.tau"):
        sigmoid_betas(10, tau=0.0)


# ---------------------------------------------------------------------------------------------------------
# Forward process and parameterisations
# ---------------------------------------------------------------------------------------------------------
def test_q_sample_mean_and_variance():
    method = make(schedule="cosine")
    x0 = torch.full((20000, 1), 0.7)
    t = torch.full((20000,), 300)
    x_t = method.q_sample(x0, t, torch.randn_like(x0))
    abar = method.alphas_cumprod[300].item()
    assert x_t.mean().item() == pytest.approx(math.sqrt(abar) * 0.7, abs=0.02)
    assert x_t.var().item() == pytest.approx(1 - abar, rel=0.03)
    # Exactly affine in the noise: noise 0 gives the mean.
    assert torch.allclose(method.q_sample(x0[:2], t[:2], torch.zeros(2, 1)), math.sqrt(abar) * x0[:2])


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_parameterisations_round_trip(prediction):
    method = make(schedule="cosine", prediction=prediction)
    x0, noise = torch.randn(6, 3, 4, 4, dtype=torch.float64), torch.randn(6, 3, 4, 4, dtype=torch.float64)
    t = torch.tensor([0, 1, 10, 500, 900, 998])
    x_t = method.q_sample(x0, t, noise)
    target = method.training_target(x0, t, noise)
    assert torch.allclose(method.predict_x0(x_t, t, target), x0, atol=1e-8)
    assert torch.allclose(method.predict_epsilon(x_t, t, target), noise, atol=1e-8)


def test_compute_loss_is_zero_for_an_oracle():
    method = make(prediction="v")
    x0 = torch.randn(8, 2)
    t, noise = torch.randint(0, 1000, (8,)), torch.randn(8, 2)
    oracle = lambda x_t, tt: method.training_target(x0, tt, noise)  # noqa: E731
    assert method.compute_loss(oracle, x0, t=t, noise=noise).item() == pytest.approx(0.0, abs=1e-10)
    assert method.compute_loss(lambda x, tt: torch.zeros_like(x), x0, t=t, noise=noise).item() > 0.1


def test_invalid_method_arguments():
    with pytest.raises(ConfigError, match="method.prediction"):
        make(prediction="score")
    with pytest.raises(ConfigError, match="method.num_timesteps"):
        make(T=0)


# ---------------------------------------------------------------------------------------------------------
# Reverse steps
# ---------------------------------------------------------------------------------------------------------
def test_ddim_eta_zero_is_deterministic_and_exact_for_a_point_mass():
    # Data = a single point x0: the exact eps at x_t is (x_t - sqrt(abar) x0) / sqrt(1 - abar), and the
    # deterministic DDIM trajectory must land on x0 from any start, whatever the noise argument.
    method = make(schedule="cosine", T=200)
    x0 = torch.tensor([[0.3, -0.8]], dtype=torch.float64)

    def eps(x, t):
        return (x - method.sqrt_alphas_cumprod[t] * x0) / method.sqrt_one_minus_alphas_cumprod[t]

    x = torch.randn(1, 2, dtype=torch.float64)
    for t, t_prev in timestep_pairs(method, 20, "trailing"):
        out = eps(x, t)
        step_a = method.ddim_step(x, t, t_prev, out, eta=0.0, noise=torch.randn_like(x))
        step_b = method.ddim_step(x, t, t_prev, out, eta=0.0, noise=torch.randn_like(x))
        assert torch.equal(step_a, step_b)
        x = step_a
    assert torch.allclose(x, x0, atol=1e-9)


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("clip", [False, True])
def test_ddim_eta_one_equals_ddpm_step(prediction, clip):
    # eta = 1 on consecutive steps: sigma_t^2 = beta_tilde_t and the mean is the DDPM posterior mean, with or
    # without clipping (both steps are functions of the same clipped x0_hat and x_t).
    method = make(schedule="linear", prediction=prediction, clip=clip)
    x_t, out, noise = (torch.randn(3, 1, 4, 4, dtype=torch.float64) for _ in range(3))
    for t in (999, 500, 10, 1):
        tt = torch.full((3,), t)
        ddpm = method.p_sample(x_t, tt, out, noise)
        ddim = method.ddim_step(x_t, t, t - 1, out, eta=1.0, noise=noise)
        assert torch.allclose(ddpm, ddim, atol=1e-10, rtol=1e-10)
        spread = method.ddim_step(x_t, t, t - 1, out, eta=1.0, noise=noise) - method.ddim_step(
            x_t, t, t - 1, out, eta=1.0, noise=torch.zeros_like(noise)
        )
        expected = method.posterior_variance[t].sqrt() * noise
        assert torch.allclose(spread, expected, atol=1e-10)


def test_p_sample_adds_no_noise_at_t0():
    method = make()
    x, out = torch.randn(4, 2), torch.randn(4, 2)
    t = torch.tensor([0, 0, 5, 5])
    a = method.p_sample(x, t, out, torch.zeros(4, 2))
    b = method.p_sample(x, t, out, torch.ones(4, 2))
    assert torch.equal(a[:2], b[:2]) and not torch.allclose(a[2:], b[2:])


def test_clip_denoised_clamps_x0():
    method = make(prediction="x0", clip=True)
    x_t = torch.zeros(1, 2)
    out = torch.tensor([[5.0, -5.0]])
    x_prev = method.ddim_step(x_t, 0, -1, out)  # the last step returns x0_hat
    assert torch.allclose(x_prev, torch.tensor([[1.0, -1.0]]))


# ---------------------------------------------------------------------------------------------------------
# Timesteps
# ---------------------------------------------------------------------------------------------------------
def test_spacings():
    assert spaced_timesteps(1000, 10, "leading") == list(range(900, -1, -100))
    assert spaced_timesteps(1000, 10, "trailing") == list(range(999, 0, -100))
    linspace = spaced_timesteps(1000, 10, "linspace")
    assert linspace[0] == 999 and linspace[-1] == 0 and len(linspace) == 10


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_previous_timestep_comes_from_the_sequence(spacing):
    method = make(T=1000)
    pairs = timestep_pairs(method, 7, spacing)
    sequence = [t for t, _ in pairs]
    assert [p for _, p in pairs] == sequence[1:] + [-1]
    assert len(pairs) == 7


def test_ddpm_visits_every_timestep():
    method = make("ddpm", T=50)
    grid = build_grid(method, "schedule", None, "leading")
    assert grid.labels == list(range(49, -1, -1))
    assert grid.sigmas == [*method.sigmas.flip(0).tolist(), 0.0]


# ---------------------------------------------------------------------------------------------------------
# Agreement with the reference schedulers (diffusers) to float32 precision
# ---------------------------------------------------------------------------------------------------------
diffusers = pytest.importorskip("diffusers")
REFERENCE_PREDICTION = {"epsilon": "epsilon", "x0": "sample", "v": "v_prediction"}
REFERENCE_SCHEDULE = {"linear": "linear", "cosine": "squaredcos_cap_v2"}
# The reference schedulers derive every coefficient in float32: 1 - abar_t loses ~1e-4 relative precision
# at the smallest t (abar_t ~ 1) and 1 / sqrt(abar_t) amplifies round-off at the largest. Ours gathers
# float64 coefficients. So float32 runs agree to FLOAT32_ATOL (the reference's own error), and the same
# steps in float64 on both sides (reference buffers replaced by ours) agree to 1e-10: the formulas are equal.
FLOAT32_ATOL = 1e-3


def reference_in_float64(ref, ours):
    ref.betas = ours.betas.clone()
    ref.alphas = 1.0 - ours.betas
    ref.alphas_cumprod = ours.alphas_cumprod.clone()
    ref.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    return ref


@pytest.mark.parametrize("schedule", REFERENCE_SCHEDULE)
def test_betas_match_reference(schedule):
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=REFERENCE_SCHEDULE[schedule])
    ours = make(schedule=schedule)
    assert torch.allclose(ours.betas.float(), ref.betas, rtol=1e-6, atol=1e-7)
    assert torch.allclose(ours.alphas_cumprod.float(), ref.alphas_cumprod, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("clip", [False, True])
def test_ddpm_step_matches_reference(prediction, clip):
    ref = diffusers.DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        prediction_type=REFERENCE_PREDICTION[prediction],
        clip_sample=clip,
        variance_type="fixed_small",
    )
    ours = make("ddpm", schedule="cosine", prediction=prediction, clip=clip)
    for dtype, atol in ((torch.float32, FLOAT32_ATOL), (torch.float64, 1e-10)):
        if dtype == torch.float64:
            ref = reference_in_float64(ref, ours)
        torch.manual_seed(0)
        x, out = torch.randn(2, 1, 8, 8, dtype=dtype), torch.randn(2, 1, 8, 8, dtype=dtype)
        for t in (999, 700, 50, 1, 0):
            noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(t), dtype=dtype)
            expected = ref.step(out, t, x, generator=torch.Generator().manual_seed(t)).prev_sample
            got = ours.p_sample(x, torch.full((2,), t), out, noise)
            assert torch.allclose(got, expected, atol=atol, rtol=0), (dtype, t, (got - expected).abs().max())


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_step_matches_reference(prediction, eta):
    ref = diffusers.DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        prediction_type=REFERENCE_PREDICTION[prediction],
        clip_sample=True,
        set_alpha_to_one=True,
        steps_offset=0,
        timestep_spacing="leading",
    )
    ref.set_timesteps(20)
    ours = make("ddim", schedule="linear", prediction=prediction, clip=True)
    pairs = timestep_pairs(ours, 20, "leading")
    assert [t for t, _ in pairs] == ref.timesteps.tolist()
    for dtype, atol in ((torch.float32, FLOAT32_ATOL), (torch.float64, 1e-10)):
        if dtype == torch.float64:
            ref = reference_in_float64(ref, ours)
        torch.manual_seed(1)
        x = torch.randn(2, 3, 4, 4, dtype=dtype)
        for t, t_prev in pairs:
            out, noise = torch.randn_like(x), torch.randn_like(x)
            expected = ref.step(out, t, x, eta=eta, variance_noise=noise, use_clipped_model_output=True).prev_sample
            got = ours.ddim_step(x, t, t_prev, out, eta=eta, noise=noise)
            assert torch.allclose(got, expected, atol=atol, rtol=0), (dtype, t, (got - expected).abs().max())
            x = expected


@pytest.mark.parametrize("spacing", ["trailing", "linspace"])
def test_timesteps_match_reference(spacing):
    ref = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing, steps_offset=0)
    ref.set_timesteps(25)
    assert build_grid(make(), "schedule", 25, spacing).labels == ref.timesteps.tolist()

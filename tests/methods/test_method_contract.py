"""What every trained formulation (BaseMethod) promises the trainer and the sampler, checked on each of them: a
finite loss, a forward process of the data's shape, a denoiser on every level of its grids, and every solver it
lists sampling it through the one Sampler loop with the NFE the solver reports."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn

from diffusion.distill.progressive import DistilledDDIM
from diffusion.methods import (
    EDM,
    SCM,
    BaseMethod,
    Consistency,
    ConsistencyTuning,
    FlowMatching,
    GaussianDiffusion,
    MeanFlow,
    Shortcut,
)
from diffusion.methods.schedules import cosine_betas, linear_betas
from diffusion.runtime.checks import ConfigError
from diffusion.sampling.grids import build_grid
from diffusion.sampling.sampler import Sampler
from diffusion.sampling.solvers import SOLVER_NAMES, solver_for

METHODS = {
    "gaussian": lambda: GaussianDiffusion(cosine_betas, num_timesteps=20, clip_denoised=False),
    "gaussian_v_zero_snr": lambda: GaussianDiffusion(partial(linear_betas, zero_terminal_snr=True), num_timesteps=20,
                                                     prediction="v", default_solver="ddim"),
    "edm": lambda: EDM(num_timesteps=20, clip_denoised=False),
    "consistency": lambda: Consistency(cosine_betas, num_timesteps=20, distilled_steps=2),
    "distilled_ddim": lambda: DistilledDDIM(cosine_betas, num_timesteps=20, distilled_steps=2),
    "flow_matching": lambda: FlowMatching(num_timesteps=20, clip_denoised=False),
    "flow_cosine_x0": lambda: FlowMatching("cosine", "x0", "mode", num_timesteps=20, shift=3.0),
    "flow_vp": lambda: FlowMatching("vp", time_sampling="uniform", num_timesteps=20, coupling="ot"),
    "flow_noise": lambda: FlowMatching(prediction="noise", num_timesteps=20, clip_denoised=False),
    "meanflow": lambda: MeanFlow(num_timesteps=20, clip_denoised=False),
    "shortcut": lambda: Shortcut(max_steps=8, num_timesteps=20, clip_denoised=False),
    "scm": lambda: SCM(num_timesteps=20, clip_denoised=False, adaptive_weighting=False),
    "ect": lambda: ConsistencyTuning(total_steps=10, num_timesteps=20, clip_denoised=False),
}
# A power of two: the step sizes a shortcut model is trained for; sCM and ECT sample in 1 or 2; 3 for the others.
STEPS = {"shortcut": 4, "scm": 2, "ect": 2}


class CountingNetwork(nn.Module):
    """A smooth function of (x, t) (and of a two-time network's interval) that counts its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor, t: torch.Tensor, interval: torch.Tensor | None = None) -> torch.Tensor:
        self.calls += 1
        span = 0.0 if interval is None else interval.float().reshape(-1, 1) / 80
        return torch.tanh(0.5 * x + t.float().reshape(-1, 1) / 40 + span)


@pytest.mark.parametrize("name", METHODS)
def test_a_method_trains_and_noises_the_data_shape(name):
    method: BaseMethod = METHODS[name]()
    x0, t = torch.randn(6, 2), torch.randint(0, method.num_timesteps, (6,))
    assert torch.isfinite(method.compute_loss(CountingNetwork(), x0)) and method.compute_loss(
        CountingNetwork(), x0, t=t, noise=torch.randn(6, 2)).ndim == 0
    levels = method.training_sigmas(t, 6, x0.device) if isinstance(method, EDM) else (
        method.training_times(t, 6, x0.device) if isinstance(method, FlowMatching) else t)
    assert method.q_sample(x0, levels, torch.randn(6, 2)).shape == x0.shape


@pytest.mark.parametrize("name", METHODS)
def test_a_method_denoises_on_every_level_of_its_grids(name):
    method: BaseMethod = METHODS[name]()
    assert method.default_solver in method.solvers and {solver_for(s, method.grids).grid for s in method.solvers
                                                        } <= set(method.grids)
    for kind in method.grids:
        if kind == "karras" and method.sigma_max == float("inf"):
            continue
        grid = build_grid(method, kind, STEPS.get(name, 3), "trailing")
        assert grid.sigmas[-1] == 0 and all(a > b for a, b in zip(grid.sigmas, grid.sigmas[1:]))
        for sigma in grid.sigmas[:-1]:
            assert torch.isfinite(method.denoise(CountingNetwork(), torch.randn(4, 2), sigma)).all()


@pytest.mark.parametrize("name", METHODS)
def test_every_solver_a_method_lists_samples_it_and_the_others_are_refused(name):
    method: BaseMethod = METHODS[name]()
    for solver in SOLVER_NAMES:
        network = CountingNetwork()
        if solver not in method.solvers:
            with pytest.raises(ConfigError, match=f"sampler.solver={solver}"):
                Sampler(network, method, (2,), solver=solver, num_samples=3, steps=3, device="cpu")
            continue
        entry = solver_for(solver, method.grids)
        if entry.grid == "karras" and method.sigma_max == float("inf"):
            with pytest.raises(ConfigError, match="zero_terminal_snr"):
                Sampler(network, method, (2,), solver=solver, num_samples=3, steps=3, device="cpu")
            continue
        result = Sampler(network, method, (2,), solver=solver, num_samples=3, steps=STEPS.get(name, 3),
                         device="cpu").sample()
        assert torch.isfinite(result.samples).all() and result.samples.shape == (3, 2)
        expected = network.calls if entry.nfe is None else entry.nfe(result.steps)  # adaptive: as counted
        assert result.nfe == network.calls == expected, (solver, network.calls)

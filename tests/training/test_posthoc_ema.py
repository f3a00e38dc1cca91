"""Post-hoc EMA (EDM2 Sec. 3): the std <-> gamma map, the profile inner product, exact resume, and reconstruction
of an EMA that was also tracked directly."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from torch import nn

from diffusion.training.posthoc_ema import PosthocEMA, gamma_to_std, profile_inner_product, reconstruct, std_to_gamma
from diffusion.runtime.checks import ConfigError


@pytest.mark.parametrize("std", [0.01, 0.05, 0.10, 0.2])
def test_std_and_gamma_are_inverse(std):
    assert gamma_to_std(std_to_gamma(std)) == pytest.approx(std, rel=1e-9)


def test_edm2_reference_gammas():
    # EDM2 Sec. 3: sigma_rel = 0.05 and 0.10 correspond to gamma ~ 16.97 and 6.94.
    assert std_to_gamma(0.05) == pytest.approx(16.97, abs=0.01)
    assert std_to_gamma(0.10) == pytest.approx(6.94, abs=0.01)


def test_profile_inner_product_matches_quadrature():
    t_a, g_a, t_b, g_b = 700.0, 6.9, 1000.0, 17.0
    tau = np.linspace(0, t_a, 200001)
    p = lambda t, g: (g + 1) * tau**g / t ** (g + 1)
    numeric = np.trapezoid(p(t_a, g_a) * p(t_b, g_b), tau)
    assert profile_inner_product(t_a, g_a, t_b, g_b) == pytest.approx(numeric, rel=1e-6)
    assert profile_inner_product(t_b, g_b, t_a, g_a) == pytest.approx(numeric, rel=1e-12)


def test_discrete_update_is_the_power_profile():
    """theta_k weighs (k^(g+1) - (k-1)^(g+1)) / t^(g+1) in the average at step t (eq. 2 telescoped)."""
    model = nn.Linear(1, 1, bias=False)
    ema = PosthocEMA(model, stds=[0.1])
    gamma, t = ema.gammas[0], 50
    thetas = torch.randn(t, dtype=torch.float64)
    for k in range(1, t + 1):
        model.weight.data.fill_(float(thetas[k - 1]))
        ema.update(model, k)
    ks = torch.arange(1, t + 1, dtype=torch.float64)
    expected = ((ks ** (gamma + 1) - (ks - 1) ** (gamma + 1)) / t ** (gamma + 1) * thetas).sum()
    assert ema.shadow.weight.item() == pytest.approx(float(expected), rel=1e-5)


def train_trajectory(model: nn.Module, steps: int, on_step) -> None:
    """SGD on a fixed regression: weights drift towards a solution with gradient noise, like real training."""
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02)
    x = torch.randn(256, 8, generator=generator)
    y = torch.sin(x @ torch.randn(8, 1, generator=generator))
    for step in range(1, steps + 1):
        index = torch.randint(0, 256, (16,), generator=generator)
        loss = (model(x[index]) - y[index]).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        on_step(step)


def flat(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.double().flatten() for v in state.values()])


def test_reconstruction_matches_a_directly_tracked_ema():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    tracked = PosthocEMA(model, stds=[0.05, 0.10])
    direct = PosthocEMA(model, stds=[0.07, 0.10])  # 0.07 is never snapshotted; 0.10 is
    snapshots = []

    def on_step(step: int) -> None:
        tracked.update(model, step)
        direct.update(model, step)
        if step % 50 == 0:
            snapshots.append(tracked.snapshot())

    train_trajectory(model, 800, on_step)
    raw = flat(model.state_dict())
    for std, target in ((0.07, direct.averages[0]), (0.10, direct.averages[1])):
        (weights,) = reconstruct(snapshots, [std])
        error = (flat(weights) - flat(target.state_dict())).norm()
        assert error / flat(target.state_dict()).norm() < 1e-2
        # Stronger: far closer to the target EMA than the target is to the raw weights or to the 0.05 EMA.
        assert error < 0.1 * (flat(target.state_dict()) - raw).norm()
        assert error < 0.2 * (flat(target.state_dict()) - flat(tracked.averages[0].state_dict())).norm()


def test_state_dict_resumes_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    ema = PosthocEMA(model)
    for step in range(1, 6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update(model, step)
    resumed = PosthocEMA(model)
    state = ema.state_dict()
    assert state["shadow"] is state["averages"][-1]  # what the sampler and export read, saved once
    buffer = io.BytesIO()
    torch.save(state, buffer)
    resumed.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    assert resumed.num_updates == 5
    for _ in range(3):
        ema.update(model)
        resumed.update(model)
    for a, b in zip(ema.averages, resumed.averages):
        for x, y in zip(a.state_dict().values(), b.state_dict().values()):
            assert torch.equal(x, y)
    with pytest.raises(ConfigError, match="trainer.ema_stds"):
        PosthocEMA(model, stds=[0.05]).load_state_dict(ema.state_dict())


def test_invalid_arguments_name_their_key():
    model = nn.Linear(2, 2)
    with pytest.raises(ConfigError, match="trainer.ema_stds"):
        PosthocEMA(model, stds=[0.5])
    with pytest.raises(ConfigError, match="trainer.ema_stds"):
        PosthocEMA(model, stds=[])
    with pytest.raises(ConfigError, match="ema.std"):
        reconstruct([PosthocEMA(model).snapshot() | {"step": 1}], [0.3])
    with pytest.raises(ConfigError, match="ema_snapshot_every"):
        reconstruct([], [0.1])
    assert math.isfinite(std_to_gamma(0.2))

"""Denoising networks: shapes, conditioning, gradients, argument checks, and a single-batch overfit."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

from diffusion.models import MLP, TimeEmbedding, UNet, timestep_embedding
from diffusion.runtime.checks import ConfigError

TINY_UNET: dict[str, Any] = dict(in_channels=1, image_size=8, base_channels=8, channel_mults=(1, 2),
                                 num_res_blocks=1, attention_resolutions=(4,), num_heads=2, num_groups=4)
TINY_MLP: dict[str, Any] = dict(dim=2, hidden_dim=16, num_layers=2, time_embed_dim=8)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny tensors gain nothing from intra-op threads, and on a busy 2-core box OpenMP spin-waits make them slow."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _perturb(model: nn.Module, std: float = 0.1) -> nn.Module:
    """Add noise to every parameter: zero-initialised output layers would otherwise hide t, y and gradients."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * std)
    return model


def _inputs(model: nn.Module, batch: int = 4) -> torch.Tensor:
    if isinstance(model, UNet):
        return torch.randn(batch, model.in_channels, model.image_size, model.image_size)
    return torch.randn(batch, model.dim)


MODEL_CASES = {
    "unet-8x8-attn4": lambda: UNet(**TINY_UNET),
    "unet-16x16-rgb": lambda: UNet(in_channels=3, image_size=16, base_channels=8, channel_mults=(1, 2, 2),
                                   num_res_blocks=1, num_groups=4),
    "unet-lists-classes": lambda: UNet(**{**TINY_UNET, "channel_mults": [1, 2], "attention_resolutions": [8, 4],
                                          "num_classes": 3}),
    "mlp": lambda: MLP(**TINY_MLP),
    "mlp-classes": lambda: MLP(**TINY_MLP, num_classes=3),
}


@pytest.fixture(params=list(MODEL_CASES), ids=list(MODEL_CASES))
def model(request: pytest.FixtureRequest) -> nn.Module:
    torch.manual_seed(0)
    return MODEL_CASES[request.param]()


# --- embeddings -------------------------------------------------------------------------------------------------


def test_timestep_embedding_shape_and_dtype() -> None:
    t = torch.tensor([0, 5, 999])
    emb = timestep_embedding(t, 16)
    assert emb.shape == (3, 16) and emb.dtype == torch.float32
    torch.testing.assert_close(emb, timestep_embedding(t.float(), 16))
    # t = 0 gives cos = 1, sin = 0.
    torch.testing.assert_close(emb[0], torch.cat([torch.ones(8), torch.zeros(8)]))
    odd = timestep_embedding(t, 7)
    assert odd.shape == (3, 7) and torch.all(odd[:, -1] == 0)


def test_timestep_embedding_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="shape"):
        timestep_embedding(torch.zeros(2, 1), 8)
    with pytest.raises(ValueError, match="dim"):
        timestep_embedding(torch.zeros(2), 1)


def test_time_embedding_null_label() -> None:
    emb = TimeEmbedding(8, 16, num_classes=3)
    t = torch.tensor([1, 2])
    assert emb.null_label == 3
    torch.testing.assert_close(emb(t), emb(t, torch.tensor([3, 3])))
    with pytest.raises(ValueError, match="shape"):
        emb(t, torch.tensor([0, 1, 2]))


# --- behaviour of every model -------------------------------------------------------------------------------------


def test_output_shape_matches_input(model: nn.Module) -> None:
    x = _inputs(model)
    out = model(x, torch.randint(0, 1000, (x.shape[0],)))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_output_depends_on_t(model: nn.Module) -> None:
    _perturb(model)
    x = _inputs(model)
    out_early = model(x, torch.full((x.shape[0],), 10))
    out_late = model(x, torch.full((x.shape[0],), 900))
    assert not torch.allclose(out_early, out_late)


def test_gradient_reaches_every_parameter(model: nn.Module) -> None:
    _perturb(model)
    x = _inputs(model)
    num_classes = getattr(model, "num_classes")
    y = torch.arange(x.shape[0]) % num_classes if num_classes else None
    model(x, torch.randint(0, 1000, (x.shape[0],)), y).pow(2).mean().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient for {missing}"


def test_runs_under_bfloat16_autocast(model: nn.Module) -> None:
    x = _inputs(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, torch.randint(0, 1000, (x.shape[0],)))
    assert out.shape == x.shape and torch.isfinite(out.float()).all()


@pytest.mark.parametrize("build", [lambda: UNet(**TINY_UNET, num_classes=3), lambda: MLP(**TINY_MLP, num_classes=3)],
                         ids=["unet", "mlp"])
def test_class_conditioning(build: Any) -> None:
    torch.manual_seed(0)
    model = _perturb(build())
    x = _inputs(model)
    t = torch.full((x.shape[0],), 100)
    out_0 = model(x, t, torch.zeros(4, dtype=torch.long))
    out_1 = model(x, t, torch.ones(4, dtype=torch.long))
    out_none = model(x, t)  # all-null labels
    assert not torch.allclose(out_0, out_1)
    torch.testing.assert_close(out_none, model(x, t, torch.full((4,), 3)))


@pytest.mark.parametrize("build", [lambda: UNet(**TINY_UNET), lambda: MLP(**TINY_MLP)], ids=["unet", "mlp"])
def test_labels_refused_without_classes(build: Any) -> None:
    model = build()
    x = _inputs(model)
    with pytest.raises(ValueError, match="num_classes"):
        model(x, torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long))


# --- argument checks ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"image_size": 10, "channel_mults": (1, 2, 2)}, "data.image_size"),
        ({"image_size": 10, "channel_mults": (1, 2, 2)}, "model.channel_mults"),
        ({"image_size": 0}, "data.image_size"),
        ({"attention_resolutions": (2,)}, "model.attention_resolutions"),
        ({"attention_resolutions": 4}, "model.attention_resolutions"),
        ({"base_channels": 6}, "model.num_groups"),
        ({"num_groups": 0}, "model.num_groups"),
        ({"num_heads": 3}, "model.num_heads"),
        ({"channel_mults": ()}, "model.channel_mults"),
        ({"channel_mults": (1, 0)}, "model.channel_mults"),
        ({"channel_mults": "12"}, "model.channel_mults"),
        ({"num_res_blocks": 0}, "model.num_res_blocks"),
        ({"base_channels": 8.0}, "model.base_channels"),
        ({"in_channels": 0}, "data.channels"),
        ({"dropout": 1.0}, "model.dropout"),
        ({"dropout": -0.1}, "model.dropout"),
        ({"num_classes": -1}, "model.num_classes"),
    ],
)
def test_unet_rejects_bad_arguments(overrides: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as info:
        UNet(**{**TINY_UNET, **overrides})
    assert "\n" not in str(info.value)


def test_unet_image_size_message_says_what_works() -> None:
    with pytest.raises(ConfigError, match="multiple of 4") as info:
        UNet(**{**TINY_UNET, "image_size": 10, "channel_mults": (1, 2, 2)})
    assert "at most 2 entries" in str(info.value)
    with pytest.raises(ConfigError, match=r"\[8, 4\]"):
        UNet(**{**TINY_UNET, "attention_resolutions": (16,)})


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"dim": 0}, "model.dim"),
        ({"hidden_dim": 0}, "model.hidden_dim"),
        ({"num_layers": 0}, "model.num_layers"),
        ({"time_embed_dim": 1}, "model.time_embed_dim"),
        ({"dropout": 1.5}, "model.dropout"),
        ({"num_classes": True}, "model.num_classes"),
    ],
)
def test_mlp_rejects_bad_arguments(overrides: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        MLP(**{**TINY_MLP, **overrides})


# --- learning -----------------------------------------------------------------------------------------------------


def test_tiny_unet_overfits_one_batch() -> None:
    """A denoiser that cannot memorise 16 fixed (x_t, t) -> noise pairs has a wiring bug."""
    torch.manual_seed(0)
    model = UNet(**{**TINY_UNET, "base_channels": 16})
    x = torch.randn(16, 1, 8, 8)
    t = torch.randint(0, 1000, (16,))
    target = torch.randn(16, 1, 8, 8)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        loss = (model(x, t) - target).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 5, f"loss went from {losses[0]:.3f} to {losses[-1]:.3f}"

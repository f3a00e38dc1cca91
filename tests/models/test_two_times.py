"""The second time every backbone embeds for one-step flows (``model.two_times``): built without it a network has
no parameter more than before and refuses an interval; built with it, its state dict only adds the interval's
embedding, interval=None is interval 0, MeanFlow's JVP runs through it (training flags restored) and its loss
trains the embedding; a transformer and an EDM2 U-Net train and sample MeanFlow through run.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from runs import main_in_process

from diffusion.methods import MeanFlow
from diffusion.models import MLP, DDPMUNet, DiT, EDM2UNet, UNet, UViT

BACKBONES = {
    "unet": lambda two: UNet(1, 8, base_channels=8, num_res_blocks=1, num_groups=4, num_classes=3, two_times=two),
    "mlp": lambda two: MLP(dim=2, hidden_dim=16, num_layers=1, time_embed_dim=8, num_classes=3, two_times=two),
    "ddpm_unet": lambda two: DDPMUNet(1, 8, base_channels=8, channel_mults=(1, 2), attention_resolutions=(4,),
                                      num_groups=4, num_classes=3, two_times=two),
    "dit": lambda two: DiT(1, 8, depth=1, hidden_size=16, num_heads=2, num_classes=3, two_times=two),
    "uvit": lambda two: UViT(1, 8, depth=1, hidden_size=16, num_heads=2, num_classes=3, two_times=two),
    "edm2_unet": lambda two: EDM2UNet(1, 8, model_channels=8, channel_mults=(1, 2), num_blocks=1,
                                      attention_resolutions=(4,), channels_per_head=8, num_classes=3, two_times=two),
}


def inputs(name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = torch.randn(4, 2) if name == "mlp" else torch.randn(4, 1, 8, 8)
    return x, torch.tensor([0.0, 250.0, 500.0, 999.0]), torch.tensor([0, 1, 2, 3])


@pytest.mark.parametrize("name", BACKBONES)
def test_a_one_time_network_is_unchanged_and_refuses_an_interval(name):
    network = BACKBONES[name](False)
    assert not any("interval" in key for key in network.state_dict())
    x, t, y = inputs(name)
    with pytest.raises(ValueError, match="model.two_times"):
        network(x, t, y, interval=t)


@pytest.mark.parametrize("name", BACKBONES)
def test_a_two_time_network_adds_only_the_interval_embedding(name):
    one, two = BACKBONES[name](False), BACKBONES[name](True)
    added = set(two.state_dict()) - set(one.state_dict())
    assert set(one.state_dict()) <= set(two.state_dict()) and added and all("interval_embed" in k for k in added)
    x, t, y = inputs(name)
    torch.testing.assert_close(two(x, t, y), two(x, t, y, interval=torch.zeros(4)))


@pytest.mark.parametrize("name", BACKBONES)
def test_meanflow_trains_the_interval_embedding_of_every_backbone(name):
    torch.manual_seed(0)
    network, method = BACKBONES[name](True).train(), MeanFlow(num_timesteps=1000, clip_denoised=False)
    x, _, y = inputs(name)
    loss = method.compute_loss(network, x, y=y)
    loss.backward()
    assert torch.isfinite(loss) and all(module.training for module in network.modules())
    grads = [p.grad for key, p in network.named_parameters() if "interval_embed" in key]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


TINY = {
    "dit": ["model=dit", "model.depth=2", "model.hidden_size=32", "model.num_heads=2"],
    "edm2_unet": ["model=edm2_unet", "model.model_channels=16", "model.channel_mults=[1,2]", "model.num_blocks=1",
                  "model.attention_resolutions=[4]", "model.channels_per_head=16"],
}
RUN = ["data=synthetic", "data.shape=[1,8,8]", "data.num_samples=40", "data.num_classes=3", "trainer=fast",
       "trainer.max_steps=2", "trainer.batch_size=16", "trainer.precision=fp32", "sampler.num_samples=6",
       "sampler.class_labels=all", "evaluator=none", "method=meanflow", "method.guidance_scale=2.0"]


@pytest.mark.parametrize("model", TINY)
def test_a_backbone_trains_and_samples_meanflow_through_run_py(model, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    assert main_in_process(monkeypatch, f"hydra.run.dir={run_dir}", *RUN, *TINY[model]) == 0
    samples = np.load(run_dir / "samples.npz")["samples"]
    assert samples.shape == (6, 1, 8, 8) and np.isfinite(samples).all()

"""Classifier-free guidance (Ho & Salimans 2022): one network, trained with labels sometimes dropped, is both the
conditional and the unconditional model; sampling extrapolates from the second towards the first.

Scale convention: ``guided = uncond + w * (cond - uncond)`` (w = 0 unconditional, 1 conditional, > 1 guided);
the paper's eq. 6, eps~ = (1 + w') eps(z, c) - w' eps(z), is this with w' = w - 1.

Autoguidance (Karras et al. 2024, eq. 1): ``D_w = D_guide + w (D_main - D_guide)``, a weaker guide with the main
model's conditioning. Both act on raw network outputs: output -> denoised is affine at fixed (x_t, t), so
extrapolating outputs extrapolates denoisers, if the guide has the main model's prediction target.
"""

from __future__ import annotations

import torch

from diffusion.runtime.checks import check_float


def guided_output(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """``uncond + scale * (cond - uncond)`` for same-shaped network outputs; ``torch.lerp`` makes ``scale=0`` and
    ``scale=1`` return ``uncond`` and ``cond`` bit for bit.

    Raises:
        ConfigError: if ``scale`` (``sampler.guidance_scale``) is not a finite number.
        ValueError: if the two outputs differ in shape.
    """
    scale = check_float(scale, "sampler.guidance_scale")
    if cond.shape != uncond.shape:
        raise ValueError(f"guided_output needs outputs of one shape, got {tuple(cond.shape)} and {tuple(uncond.shape)}")
    return torch.lerp(uncond, cond, scale)


def autoguided_output(main: torch.Tensor, guide: torch.Tensor, scale: float) -> torch.Tensor:
    """``guide + scale * (main - guide)`` (Karras et al. 2024, eq. 1); ``scale=1`` returns ``main`` bit for bit.

    Raises:
        ConfigError: if ``scale`` (``sampler.guide_scale``) is not a finite number.
        ValueError: if the two outputs differ in shape.
    """
    scale = check_float(scale, "sampler.guide_scale")
    if main.shape != guide.shape:
        raise ValueError(f"autoguided_output needs outputs of one shape, got {tuple(main.shape)} and "
                         f"{tuple(guide.shape)}")
    return torch.lerp(guide, main, scale)


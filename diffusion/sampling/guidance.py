"""Classifier-free guidance (Ho & Salimans 2022): one network, trained with labels sometimes dropped, is both the
conditional and the unconditional model; sampling extrapolates from the second towards the first.

Scale convention: ``guided = uncond + w * (cond - uncond)``, so w = 0 is the unconditional model, w = 1 the
conditional one and w > 1 guided. The paper's eq. 6, eps~ = (1 + w') eps(z, c) - w' eps(z), is the same with
w' = w - 1 (its w' = 0 is the conditional model).

Autoguidance (Karras et al. 2024, "Guiding a Diffusion Model with a Bad Version of Itself", eq. 1 with D_0 the
guide) extrapolates from a weaker guide model (smaller or less trained, same conditioning) towards the main one:
``D_w = D_guide + w (D_main - D_guide)``. Both are applied to raw network outputs: the map from output to
denoised sample (epsilon, x0 or v prediction at fixed x_t and t; EDM's c_skip x + c_out F) is affine, so
extrapolating outputs is extrapolating denoisers, provided the guide has the main model's prediction target.
"""

from __future__ import annotations

import torch

from diffusion.runtime.checks import check_float


def guided_output(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """``uncond + scale * (cond - uncond)`` for network outputs of the same shape (any prediction target).

    Exact at both ends: ``scale=0`` returns ``uncond`` and ``scale=1`` returns ``cond`` bit for bit
    (``torch.lerp`` evaluates from the nearer end).

    Raises:
        ConfigError: if ``scale`` (``sampler.guidance_scale``) is not a finite number.
        ValueError: if the two outputs differ in shape.
    """
    scale = check_float(scale, "sampler.guidance_scale")
    if cond.shape != uncond.shape:
        raise ValueError(f"guided_output needs outputs of one shape, got {tuple(cond.shape)} and {tuple(uncond.shape)}")
    return torch.lerp(uncond, cond, scale)


def autoguided_output(main: torch.Tensor, guide: torch.Tensor, scale: float) -> torch.Tensor:
    """``guide + scale * (main - guide)`` (Karras et al. 2024, eq. 1): ``scale=1`` returns ``main`` bit for bit,
    ``scale=0`` the guide; the paper's best ImageNet results use 2-3.

    Raises:
        ConfigError: if ``scale`` (``sampler.guide_scale``) is not a finite number.
        ValueError: if the two outputs differ in shape.
    """
    scale = check_float(scale, "sampler.guide_scale")
    if main.shape != guide.shape:
        raise ValueError(f"autoguided_output needs outputs of one shape, got {tuple(main.shape)} and "
                         f"{tuple(guide.shape)}")
    return torch.lerp(guide, main, scale)


"""U-ViT (Bao et al. 2023, "All are Worth Words: A ViT Backbone for Diffusion Models").

Time, class label and ``p x p`` patches are all tokens (learned position embedding); a pre-norm transformer
with long skips from each shallow block to its mirror deep block (Sec. 3)::

    in blocks  h_1 .. h_k              (each pushes its output on a stack)
    mid block                           k = (depth - 1) / 2
    out blocks h = Linear(concat(h, popped skip))  then the block

then LayerNorm, a per-token linear map to ``p x p x C`` pixels, unpatchify, and a 3x3 conv (removes patch
artefacts). Sizes (Table 1): :data:`UVIT_SIZES`, conf/model/uvit.yaml. Attention, MLP and shape checks are
DiT's (:mod:`diffusion.models.dit`), with exact GELU as in the paper's code.
"""

from __future__ import annotations

from typing import Literal

import torch
from einops import rearrange
from torch import nn

from diffusion.models.dit import (Attention, FeedForward, TokenLayout, patch_grid, sincos_position_embedding,
                                  transformer_shape)
from diffusion.models.embeddings import IntervalEmbedding, add_interval, timestep_embedding
from diffusion.runtime.checks import ConfigError, check_bool, check_choice, check_float, check_int

#: Table 1 of the paper: size name -> (layers, width, heads); the MLP is 4x the width.
UVIT_SIZES: dict[str, tuple[int, int, int]] = {"S": (13, 512, 8), "M": (17, 768, 12), "L": (21, 1024, 16),
                                               "H": (29, 1152, 16)}


class UViTBlock(nn.Module):
    """A pre-norm transformer block; a deep block first merges its long skip: ``h = Linear(concat(h, skip))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, skip: bool = False) -> None:
        super().__init__()
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, mlp_ratio, gelu="none")

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``(B, N, D)`` (and ``skip`` ``(B, N, D)`` for a deep block) -> ``(B, N, D)``."""
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))  # type: ignore[list-item]
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class UViT(nn.Module):
    """Predicts ``(B, C, H, W)`` from ``x_t`` ``(B, C, H, W)``, ``t`` ``(B,)`` and optional labels ``y`` ``(B,)``.

    Settings: see conf/model/uvit.yaml (in_channels and image_size come from the data).

    Raises:
        ConfigError: naming the ``model.*`` (or ``data.*``) key of an invalid argument.
    """

    def __init__(self, in_channels: int, image_size: int, size: str = "S", patch_size: int = 2,
                 depth: int | None = None, hidden_size: int | None = None, num_heads: int | None = None,
                 mlp_ratio: float = 4.0, mlp_time_embed: bool = False, qkv_bias: bool = False,
                 conv_out: bool = True, init: Literal["trunc_normal", "xavier_zero"] = "trunc_normal",
                 position_init: Literal["trunc_normal", "sincos"] = "trunc_normal", num_classes: int = 0,
                 two_times: bool = False) -> None:
        super().__init__()
        depth, dim, heads = transformer_shape(size, depth, hidden_size, num_heads, UVIT_SIZES)
        if depth % 2 == 0:
            raise ConfigError(f"model.depth={depth} must be odd: as many shallow as deep blocks, and a middle one")
        grid = patch_grid(in_channels, image_size, patch_size)
        check_float(mlp_ratio, "model.mlp_ratio", minimum=0.0, inclusive=False)
        self.in_channels, self.image_size, self.patch_size, self.dim = in_channels, image_size, patch_size, dim
        self.num_classes = check_int(num_classes, "model.num_classes", minimum=0)
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)  # (B, D, H/p, W/p)
        self.time_embed = (nn.Sequential(nn.Linear(dim, 4 * dim), nn.SiLU(), nn.Linear(4 * dim, dim))
                           if check_bool(mlp_time_embed, "model.mlp_time_embed") else nn.Identity())
        self.interval_embed = IntervalEmbedding.build(two_times, dim, dim)
        self.label_embed = nn.Embedding(num_classes + 1, dim) if num_classes else None  # row num_classes: null
        self.extras = 2 if num_classes else 1  # the time token (and the label token) before the patches
        self.pos_embed = nn.Parameter(torch.zeros(self.extras + grid * grid, dim))
        self.init = check_choice(init, "model.init", ("trunc_normal", "xavier_zero"))
        self.position_init = check_choice(position_init, "model.position_init", ("trunc_normal", "sincos"))
        qkv_bias = check_bool(qkv_bias, "model.qkv_bias")
        self.in_blocks = nn.ModuleList(UViTBlock(dim, heads, mlp_ratio, qkv_bias) for _ in range(depth // 2))
        self.mid_block = UViTBlock(dim, heads, mlp_ratio, qkv_bias)
        self.out_blocks = nn.ModuleList(UViTBlock(dim, heads, mlp_ratio, qkv_bias, skip=True)
                                        for _ in range(depth // 2))
        self.norm = nn.LayerNorm(dim)
        self.decoder_pred = nn.Linear(dim, patch_size * patch_size * in_channels)
        self.final_conv = (nn.Conv2d(in_channels, in_channels, 3, padding=1)
                           if check_bool(conv_out, "model.conv_out") else nn.Identity())
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``init="trunc_normal"`` (the paper's code): truncated-normal (std 0.02) linears, zero biases.
        ``"xavier_zero"``: Xavier-uniform linears (DiT's) and each block's attention and MLP output projections at
        zero, so every block starts as the identity; std 0.02 is about 1 / sqrt(width) at the paper's widths of
        512-1,152 but a fifth of it at a CPU width of 88. The position embedding: truncated normal (std 0.02, the
        paper's) or, ``position_init="sincos"``, learned from the fixed 2-D sin-cos (zero on the extra tokens)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                if self.init == "xavier_zero":
                    nn.init.xavier_uniform_(module.weight)
                else:
                    nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        if self.init == "xavier_zero":
            for block in [*self.in_blocks, self.mid_block, *self.out_blocks]:
                nn.init.zeros_(block.attn.proj.weight)
                nn.init.zeros_(block.mlp[-1].weight)
        with torch.no_grad():
            if self.position_init == "sincos":
                grid = self.image_size // self.patch_size
                self.pos_embed.zero_()[self.extras:] = sincos_position_embedding(self.dim, grid)
            else:
                nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def token_layout(self) -> TokenLayout:
        """In blocks, mid block, out blocks (the order they run); each output holds the time (and label) token before
        the patch tokens, in row-major patch order."""
        blocks = [*self.in_blocks, self.mid_block, *self.out_blocks]
        return TokenLayout(blocks, self.extras, self.dim, self.image_size // self.patch_size)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                interval: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``(B, C, H, W)``, ``t`` ``(B,)``, ``y`` ``(B,)`` long or ``None`` -> ``(B, C, H, W)``."""
        patches = rearrange(self.patch_embed(x), "b d h w -> b (h w) d")  # (B, N, D)
        time_token = self.time_embed(timestep_embedding(t, self.dim).to(patches.dtype))  # (B, D)
        tokens = [add_interval(time_token, self.interval_embed, t, interval)[:, None]]  # (B, 1, D)
        if self.label_embed is not None:
            tokens.append(self.label_embed(self.labels(t, y))[:, None])
        elif y is not None:
            raise ValueError("class labels y were given to a model built with num_classes=0; pass y=None or set "
                             "model.num_classes to the data set's number of classes")
        h = torch.cat([*tokens, patches], dim=1) + self.pos_embed  # (B, extras + N, D)
        skips = []
        for block in self.in_blocks:
            h = block(h)
            skips.append(h)
        h = self.mid_block(h)
        for block in self.out_blocks:
            h = block(h, skips.pop())
        out = self.decoder_pred(self.norm(h))[:, self.extras:]  # (B, N, p * p * C)
        side = self.image_size // self.patch_size
        image = rearrange(out, "b (h w) (p q c) -> b c (h p) (w q)", h=side, p=self.patch_size, q=self.patch_size)
        return self.final_conv(image)

    def labels(self, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """``y``, or the null label for every sample when ``y`` is None."""
        if y is None:
            return torch.full_like(t, self.num_classes, dtype=torch.long)
        if y.shape != t.shape:
            raise ValueError(f"class labels y must have shape {tuple(t.shape)} like t, got {tuple(y.shape)}")
        return y

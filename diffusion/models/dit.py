"""DiT, the Diffusion Transformer (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers").

``p x p`` patches become tokens (strided conv + position embedding); ``depth`` blocks follow, each conditioned
on ``c = embed(t) + embed(y)`` through adaLN-Zero (Sec. 3.2), so each block is the identity at init:

    shift_1, scale_1, gate_1, shift_2, scale_2, gate_2 = Linear(SiLU(c))         (zero-initialised)
    h = h + gate_1 * Attention(LayerNorm(h) * (1 + scale_1) + shift_1)
    h = h + gate_2 * MLP(LayerNorm(h) * (1 + scale_2) + shift_2)

A final adaLN layer maps tokens back to pixels. Sizes (Table 1): :data:`DIT_SIZES`, conf/model/dit.yaml. No
learned variance output (not trained here). Not taken from timm: it needs torchvision, absent beside CPU torch.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from diffusion.models.attention import attention
from diffusion.models.embeddings import TimeEmbedding
from diffusion.runtime.checks import ConfigError, check_choice, check_float, check_int

#: Table 1 of the paper: size name -> (depth, hidden size D, heads).
DIT_SIZES: dict[str, tuple[int, int, int]] = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16),
                                              "XL": (28, 1152, 16)}
FREQUENCY_DIM = 256  # width of the sinusoidal timestep features (the paper's TimestepEmbedder)


class TokenLayout(NamedTuple):
    """Where a transformer backbone's patch tokens are: its blocks in the order they run (a forward hook on one gives
    its output ``(B, prefix + side^2, width)``), the leading non-patch tokens to skip, the token width and the patch
    grid's side. What representation alignment (REPA) reads; the forward pass is unchanged."""

    blocks: list[nn.Module]
    prefix: int
    width: int
    side: int


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: ``x (B, N, D) * (1 + scale) + shift``, with per-sample ``(B, D)`` shift and scale."""
    return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    """Multi-head self-attention over the tokens: one qkv projection, SDPA, an output projection."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, D) -> (B, N, D)``."""
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        out = attention(q, k, v)  # (B, heads, N, D / heads)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))


class FeedForward(nn.Sequential):
    """The transformer MLP: ``Linear(D, r D) -> GELU -> Linear(r D, D)`` (DiT: GELU's tanh approximation)."""

    def __init__(self, dim: int, mlp_ratio: float, gelu: Literal["tanh", "none"] = "tanh") -> None:
        hidden = int(dim * mlp_ratio)
        super().__init__(nn.Linear(dim, hidden), nn.GELU(approximate=gelu), nn.Linear(hidden, dim))


class DiTBlock(nn.Module):
    """A transformer block with adaLN-Zero conditioning (the equations in the module docstring)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)  # scale and shift come from c
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = FeedForward(dim, mlp_ratio)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, N, D)``, ``c`` ``(B, D)`` -> ``(B, N, D)``."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c).chunk(6, dim=1)  # each (B, D)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    """adaLN (shift and scale from c), then a linear map of each token to its ``p * p * C`` output pixels."""

    def __init__(self, dim: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))  # (B, N, p * p * C)


def sincos_position_embedding(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding (MAE, He et al. 2022): half the channels encode the row, half the column,
    each as ``[sin(pos * w_i), cos(pos * w_i)]`` with ``w_i = 10000 ** (-i / (dim / 4))``. Returns ``(grid^2, dim)``."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # (dim / 4,)
    pos = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(pos, pos, indexing="ij")  # (grid, grid) each

    def encode(p: torch.Tensor) -> torch.Tensor:
        angles = p.reshape(-1, 1) * omega  # (grid^2, dim / 4)
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    table = torch.cat([encode(cols), encode(rows)], dim=1).float()  # (grid^2, 4 * (dim // 4))
    return F.pad(table, (0, dim - table.shape[1]))  # a width not divisible by 4: zero last columns


class DiT(nn.Module):
    """Predicts ``(B, C, H, W)`` from ``x_t`` ``(B, C, H, W)``, ``t`` ``(B,)`` and optional labels ``y`` ``(B,)``.

    Settings: see conf/model/dit.yaml (in_channels and image_size come from the data).

    Raises:
        ConfigError: naming the ``model.*`` (or ``data.*``) key of an invalid argument.
    """

    def __init__(self, in_channels: int, image_size: int, size: str = "S", patch_size: int = 2,
                 depth: int | None = None, hidden_size: int | None = None, num_heads: int | None = None,
                 mlp_ratio: float = 4.0, position_embedding: Literal["sincos", "learned"] = "sincos",
                 num_classes: int = 0, two_times: bool = False) -> None:
        super().__init__()
        depth, dim, heads = transformer_shape(size, depth, hidden_size, num_heads, DIT_SIZES)
        grid = patch_grid(in_channels, image_size, patch_size)
        check_float(mlp_ratio, "model.mlp_ratio", minimum=0.0, inclusive=False)
        check_choice(position_embedding, "model.position_embedding", ("sincos", "learned"))
        self.in_channels, self.image_size, self.patch_size = in_channels, image_size, patch_size
        self.num_classes = check_int(num_classes, "model.num_classes", minimum=0)
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)  # (B, D, H/p, W/p)
        if position_embedding == "learned":
            self.pos_embed = nn.Parameter(torch.randn(grid * grid, dim) * 0.02)
        else:
            self.register_buffer("pos_embed", sincos_position_embedding(dim, grid), persistent=False)
        self.embed = TimeEmbedding(FREQUENCY_DIM, dim, num_classes, two_times)
        self.blocks = nn.ModuleList(DiTBlock(dim, heads, mlp_ratio) for _ in range(depth))
        self.hidden_size = dim
        self.final = FinalLayer(dim, patch_size, in_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The paper's initialisation: Xavier-uniform linears, N(0, 0.02) embeddings, and adaLN-Zero: every
        modulation and the output linear start at zero, so each block is the identity and the output is 0."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.xavier_uniform_(self.patch_embed.weight.view(self.patch_embed.weight.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        for linear in (self.embed.mlp[0], self.embed.mlp[2]):
            nn.init.normal_(linear.weight, std=0.02)
        if self.embed.class_embed is not None:
            nn.init.normal_(self.embed.class_embed.weight, std=0.02)
        for zeroed in [*(block.modulation[1] for block in self.blocks), self.final.modulation[1], self.final.linear]:
            nn.init.zeros_(zeroed.weight)
            nn.init.zeros_(zeroed.bias)

    def token_layout(self) -> TokenLayout:
        """The blocks whose outputs are the patch tokens ``(B, N, D)``, in row-major patch order."""
        return TokenLayout(list(self.blocks), 0, self.hidden_size, self.image_size // self.patch_size)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                interval: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``(B, C, H, W)``, ``t`` ``(B,)``, ``y`` ``(B,)`` long or ``None`` -> ``(B, C, H, W)``."""
        tokens = rearrange(self.patch_embed(x), "b d h w -> b (h w) d") + self.pos_embed  # (B, N, D)
        c = self.embed(t, y, interval)  # (B, D)
        for block in self.blocks:
            tokens = block(tokens, c)
        out = self.final(tokens, c)  # (B, N, p * p * C)
        side = self.image_size // self.patch_size
        return rearrange(out, "b (h w) (p q c) -> b c (h p) (w q)", h=side, p=self.patch_size, q=self.patch_size)


def transformer_shape(size: str, depth: int | None, hidden_size: int | None, num_heads: int | None,
                      table: dict[str, tuple[int, int, int]]) -> tuple[int, int, int]:
    """(depth, width, heads) of a named size, each overridable; the width must split evenly into the heads.

    Raises:
        ConfigError: naming ``model.size``, ``model.depth``, ``model.hidden_size`` or ``model.num_heads``.
    """
    named = table[check_choice(size, "model.size", tuple(table))]
    depth = named[0] if depth is None else check_int(depth, "model.depth", minimum=1)
    dim = named[1] if hidden_size is None else check_int(hidden_size, "model.hidden_size", minimum=1)
    heads = named[2] if num_heads is None else check_int(num_heads, "model.num_heads", minimum=1)
    if dim % heads:
        raise ConfigError(f"model.hidden_size={dim} must be divisible by model.num_heads={heads} (each head gets an "
                          f"equal share of the width)")
    return depth, dim, heads


def patch_grid(in_channels: int, image_size: int, patch_size: int) -> int:
    """Patches per side, ``image_size / patch_size``.

    Raises:
        ConfigError: naming ``model.patch_size`` when it does not divide ``data.image_size``.
    """
    check_int(in_channels, "model.in_channels", minimum=1)
    check_int(image_size, "data.image_size", minimum=1)
    check_int(patch_size, "model.patch_size", minimum=1)
    if image_size % patch_size:
        divisors = [p for p in range(1, image_size + 1) if image_size % p == 0 and p <= 8]
        raise ConfigError(f"model.patch_size={patch_size} must divide data.image_size={image_size}; "
                          f"choose one of {divisors}")
    return image_size // patch_size


"""Time-conditioned U-Net for images (Ronneberger et al. 2015, as adapted by DDPM, Ho et al. 2020, App. B).

Layout for ``channel_mults=(1, 2)``, ``num_res_blocks=1``, ``attention_resolutions=(4,)`` on 8x8 input
(``C = base_channels``; ``[2C + skip b]`` concatenates the saved activation along channels)::

    conv_in     8x8   in_channels -> C
    down[0]     8x8   Res C -> C ....................................... skip a
    downsample  8x8 -> 4x4
    down[1]     4x4   Res C -> 2C, Attn ....................... skip b
    mid         4x4   Res 2C -> 2C, Attn; Res 2C -> 2C
    up[0]       4x4   Res [2C + skip b] -> 2C, Attn
    upsample    4x4 -> 8x8
    up[1]       8x8   Res [2C + skip a] -> C
    conv_out    8x8   GroupNorm, SiLU, conv C -> in_channels

Each level has ``num_res_blocks`` blocks on both sides (DDPM has one more up block; not needed for small images).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from diffusion.models.attention import attention
from diffusion.models.embeddings import TimeEmbedding
from diffusion.runtime.checks import ConfigError, check_float, check_int


class ResidualBlock(nn.Module):
    """GroupNorm -> SiLU -> conv -> scale-shift by time -> SiLU -> dropout -> conv, plus a skip path.
    The time modulates the second GroupNorm, ``norm(h) * (1 + scale) + shift`` (ADM, Dhariwal & Nichol 2021,
    Sec. 3): feature statistics change a lot with ``t``, and a per-channel gain lets each block follow.
    """

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float, num_groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(num_groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_channels)
        self.norm2 = nn.GroupNorm(num_groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        # Zero-init so every block starts as the identity (on its skip path): deep nets then train stably.
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, C_in, H, W)``, ``emb`` ``(B, emb_dim)`` already through SiLU -> ``(B, C_out, H, W)``."""
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, W)
        scale, shift = rearrange(self.emb_proj(emb), "b (two c) -> two b c 1 1", two=2)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over all ``H * W`` positions, with a residual connection."""

    def __init__(self, channels: int, num_heads: int, num_groups: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(num_groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)  # starts as the identity, like ResidualBlock
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, C, H, W)``."""
        height = x.shape[2]
        qkv = self.qkv(self.norm(x))  # (B, 3C, H, W)
        # Each (B, heads, H*W, C/heads) with its channels contiguous: SDPA's fused CPU kernel needs that (strided
        # ones take its slower math path: attention 1.2x slower at the MNIST preset's 7x7, a training step 1.01x)
        q, k, v = rearrange(qkv, "b (three heads d) h w -> three b heads (h w) d", three=3,
                            heads=self.num_heads).contiguous().unbind(0)
        out = attention(q, k, v)  # (B, heads, H*W, C/heads)
        out = rearrange(out, "b heads (h w) d -> b (heads d) h w", h=height)
        return x + self.proj(out)


class UNetStage(nn.Module):
    """One residual block, followed by self-attention when the stage's resolution asks for it."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float, num_groups: int,
                 attention_heads: int) -> None:
        super().__init__()
        self.res = ResidualBlock(in_channels, out_channels, emb_dim, dropout, num_groups)
        self.attn = SelfAttention(out_channels, attention_heads, num_groups) if attention_heads else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = self.res(x, emb)
        return x if self.attn is None else self.attn(x)


class Downsample(nn.Module):
    """Halve the side length with a stride-2 3x3 conv (learned, unlike pooling)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)  # (B, C, H, W) -> (B, C, H/2, W/2)


class Upsample(nn.Module):
    """Double the side length: nearest-neighbour then a 3x3 conv (avoids transposed-conv checkerboards)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # (B, C, 2H, 2W)


class UNet(nn.Module):
    """Predicts ``(B, C, H, W)`` (noise, ``x_0`` or ``v``: the method decides) from ``x_t`` and ``t``.

    Settings: see conf/model/unet.yaml (in_channels and image_size come from the data).

    Raises:
        ConfigError: on any invalid argument, naming the config key to change.
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        base_channels: int = 64,
        channel_mults: Sequence[int] | None = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] | None = (),
        dropout: float = 0.0,
        num_heads: int = 4,
        num_groups: int = 8,
        num_classes: int = 0,
        two_times: bool = False,
    ) -> None:
        super().__init__()
        if channel_mults is None:
            channel_mults = levels_for(check_int(image_size, "data.image_size", minimum=1))
        if attention_resolutions is None:
            attention_resolutions = (image_size // 2 ** (len(channel_mults) - 1),)
        channel_mults, attention_resolutions = _check_arguments(
            in_channels, image_size, base_channels, channel_mults, num_res_blocks, attention_resolutions, dropout,
            num_heads, num_groups, num_classes,
        )
        self.in_channels, self.image_size, self.num_classes = in_channels, image_size, num_classes
        resolutions = [image_size // 2**level for level in range(len(channel_mults))]
        widths = [base_channels * mult for mult in channel_mults]

        emb_dim = 4 * base_channels
        self.time_embed = TimeEmbedding(base_channels, emb_dim, num_classes, two_times)
        heads_at = {res: (num_heads if res in attention_resolutions else 0) for res in resolutions}

        def stage(c_in: int, c_out: int, res: int, attend: bool = True) -> UNetStage:
            return UNetStage(c_in, c_out, emb_dim, dropout, num_groups, heads_at[res] if attend else 0)

        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        ch, skip_widths = base_channels, []
        for level, (width, res) in enumerate(zip(widths, resolutions)):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(stage(ch, width, res))
                ch = width
                skip_widths.append(width)
            self.down.append(blocks)
            self.downsample.append(Downsample(ch) if level < len(widths) - 1 else nn.Identity())
        # Middle at the lowest resolution: Res, (Attn), Res.
        self.mid = nn.ModuleList([stage(ch, ch, resolutions[-1]), stage(ch, ch, resolutions[-1], attend=False)])
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(len(widths))):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(stage(ch + skip_widths.pop(), widths[level], resolutions[level]))
                ch = widths[level]
            self.up.append(blocks)
            self.upsample.append(Upsample(ch) if level > 0 else nn.Identity())
        self.norm_out = nn.GroupNorm(num_groups, ch)
        self.conv_out = nn.Conv2d(ch, in_channels, 3, padding=1)
        # Zero output: the untrained net predicts 0 (the mean of the noise/v target), a well-scaled start.
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                interval: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``(B, C, H, W)``, ``t`` ``(B,)``, ``y`` ``(B,)`` long or ``None``, ``interval`` ``(B,)`` or ``None``
        -> ``(B, C, H, W)``.

        Raises:
            ValueError: if ``y`` is given and the net was built with ``num_classes=0``.
        """
        # SiLU once here instead of in every block's projection (ADM applies it per block; same function).
        emb = F.silu(self.time_embed(t, y, interval))  # (B, 4 * base_channels)
        h = self.conv_in(x)  # (B, base, H, W)
        skips = []
        for blocks, downsample in zip(self.down, self.downsample):
            for block in blocks:
                h = block(h, emb)
                skips.append(h)
            h = downsample(h)
        for block in self.mid:
            h = block(h, emb)
        for blocks, upsample in zip(self.up, self.upsample):
            for block in blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), emb)  # concat along channels
            h = upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def levels_for(image_size: int, max_levels: int = 3, smallest_side: int = 4) -> tuple[int, ...]:
    """``channel_mults`` for a square image: one level more for each halving that keeps the side even and at least
    ``smallest_side`` (8 -> 8, 4; 28 -> 28, 14, 7; 32 -> 32, 16, 8), at most ``max_levels``; width doubles once."""
    levels, side = 1, image_size
    while levels < max_levels and side % 2 == 0 and side // 2 >= smallest_side:
        levels, side = levels + 1, side // 2
    return (1, *([2] * (levels - 1)))


def _check_arguments(
    in_channels: int, image_size: int, base_channels: int, channel_mults: Sequence[int], num_res_blocks: int,
    attention_resolutions: Sequence[int], dropout: float, num_heads: int, num_groups: int, num_classes: int,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Raise :class:`ConfigError` on any bad :class:`UNet` argument; return the two sequences as tuples."""
    check_int(in_channels, "data.channels", minimum=1)
    check_int(image_size, "data.image_size", minimum=1)
    check_int(base_channels, "model.base_channels", minimum=1)
    mults = _check_int_sequence(channel_mults, "model.channel_mults", minimum=1, allow_empty=False)
    check_int(num_res_blocks, "model.num_res_blocks", minimum=1)
    attention = _check_int_sequence(attention_resolutions, "model.attention_resolutions", minimum=1)
    if check_float(dropout, "model.dropout", minimum=0.0) >= 1.0:
        raise ConfigError(f"model.dropout must be in [0, 1), got {dropout!r}")
    check_int(num_heads, "model.num_heads", minimum=1)
    check_int(num_groups, "model.num_groups", minimum=1)
    check_int(num_classes, "model.num_classes", minimum=0)
    _check_image_size(image_size, mults)
    widths = [base_channels * mult for mult in mults]
    resolutions = [image_size // 2**level for level in range(len(mults))]
    _check_widths(base_channels, widths, resolutions, attention, num_heads, num_groups)
    return mults, attention


def _check_int_sequence(value: object, key: str, minimum: int, allow_empty: bool = True) -> tuple[int, ...]:
    """A list or tuple of ints (Hydra hands over lists) as a tuple."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ConfigError(f"{key} must be a list of integers, got {value!r}")
    if not value and not allow_empty:
        raise ConfigError(f"{key} must not be empty")
    return tuple(check_int(item, key, minimum=minimum) for item in value)


def _check_image_size(image_size: int, channel_mults: tuple[int, ...]) -> None:
    """Every level after the first halves the side, so the halvings must be exact."""
    factor = 2 ** (len(channel_mults) - 1)
    if image_size % factor:
        max_levels = (image_size & -image_size).bit_length()  # 1 + how many times 2 divides image_size
        raise ConfigError(
            f"data.image_size={image_size} must be divisible by 2**(len(model.channel_mults)-1)={factor} for "
            f"model.channel_mults={list(channel_mults)}: use an image size that is a multiple of {factor} "
            f"(e.g. {factor}, {2 * factor}, {4 * factor}) or at most {max_levels} entries in model.channel_mults"
        )


def _check_widths(base_channels: int, widths: list[int], resolutions: list[int],
                  attention_resolutions: tuple[int, ...], num_heads: int, num_groups: int) -> None:
    """GroupNorm and attention heads must divide the widths they act on; attention levels must exist."""
    if base_channels % num_groups:
        raise ConfigError(f"model.base_channels={base_channels} must be divisible by model.num_groups={num_groups} "
                          f"(GroupNorm splits every level's channels into groups)")
    for res in attention_resolutions:
        if res not in resolutions:
            raise ConfigError(f"model.attention_resolutions has {res}, but this net's feature maps are {resolutions} "
                              f"(from data.image_size and model.channel_mults); choose from those")
    for width, res in zip(widths, resolutions):
        if res in attention_resolutions and width % num_heads:
            raise ConfigError(f"model.num_heads={num_heads} must divide the {width} channels at the {res}x{res} "
                              f"attention level (model.base_channels * model.channel_mults)")

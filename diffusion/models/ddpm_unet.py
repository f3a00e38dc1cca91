"""The DDPM paper's U-Net (Ho et al. 2020, App. B; the ``unet2d16b2`` network of the official TensorFlow code).

Unlike :class:`~diffusion.models.UNet`: the time embedding is *added* after each block's first conv;
single-head attention; ``num_res_blocks + 1`` up blocks per level, with skips from ``conv_in``, every down
block and every downsample (CIFAR-10 layout, 35.7M parameters)::

      conv_in 32x32 .............................................. skip 0
      down[0] 32x32  Res 128, Res 128 ............................. skips 1, 2;   downsample -> 16x16 skip 3
      down[1] 16x16  Res+Attn 256, Res+Attn 256 ................... skips 4, 5;   downsample -> 8x8   skip 6
      down[2] 8x8    Res 256, Res 256 ............................. skips 7, 8;   downsample -> 4x4   skip 9
      down[3] 4x4    Res 256, Res 256 ............................. skips 10, 11
      mid     4x4    Res, Attn, Res
      up[3]   4x4    3 x Res [h + skips 11, 10, 9] -> 256;               upsample -> 8x8
      up[2]   8x8    3 x Res [h + skips 8, 7, 6] -> 256;                 upsample -> 16x16
      up[1]   16x16  3 x Res+Attn [h + skips 5, 4, 3] -> 256;            upsample -> 32x32
      up[0]   32x32  3 x Res [h + skips 2, 1, 0] -> 128
      out     GroupNorm, SiLU, conv 128 -> 3 (zero-initialised)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.models.embeddings import TimeEmbedding
from diffusion.models.unet import Downsample, ResidualBlock, SelfAttention, Upsample, _check_arguments


class DDPMResidualBlock(ResidualBlock):
    """:class:`~diffusion.models.unet.ResidualBlock` with DDPM's conditioning: GroupNorm -> SiLU -> conv ->
    ``+ Linear(emb)`` -> GroupNorm -> SiLU -> dropout -> conv, plus the input (a 1x1 conv when the width changes).
    The embedding is added to the activations instead of scaling and shifting the second GroupNorm."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float, num_groups: int) -> None:
        super().__init__(in_channels, out_channels, emb_dim, dropout, num_groups)
        self.emb_proj = nn.Linear(emb_dim, out_channels)  # one vector to add, not a (scale, shift) pair

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, C_in, H, W)``, ``emb`` ``(B, emb_dim)`` already through SiLU -> ``(B, C_out, H, W)``."""
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, W)
        h = h + self.emb_proj(emb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class _Stage(nn.Module):
    """A residual block, then single-head self-attention at the attention resolutions."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float, num_groups: int, attend: bool) -> None:
        super().__init__()
        self.res = DDPMResidualBlock(c_in, c_out, emb_dim, dropout, num_groups)
        self.attn = SelfAttention(c_out, 1, num_groups) if attend else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = self.res(x, emb)
        return x if self.attn is None else self.attn(x)


class DDPMUNet(nn.Module):
    """Predicts ``(B, C, H, W)`` from ``x_t`` ``(B, C, H, W)``, ``t`` ``(B,)`` and optional labels ``y`` ``(B,)``.

    Settings: see conf/model/ddpm_unet.yaml (in_channels and image_size come from the data).

    Raises ConfigError naming the key of an invalid argument.
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        base_channels: int = 128,
        channel_mults: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        num_groups: int = 32,
        num_classes: int = 0,
        two_times: bool = False,
    ) -> None:
        super().__init__()
        channel_mults, attention_resolutions = _check_arguments(
            in_channels, image_size, base_channels, channel_mults, num_res_blocks, attention_resolutions, dropout,
            1, num_groups, num_classes,
        )
        self.in_channels, self.image_size, self.num_classes = in_channels, image_size, num_classes
        emb_dim = 4 * base_channels
        self.time_embed = TimeEmbedding(base_channels, emb_dim, num_classes, two_times)

        def stage(c_in: int, c_out: int, res: int, attend: bool = True) -> _Stage:
            return _Stage(c_in, c_out, emb_dim, dropout, num_groups, attend and res in attention_resolutions)

        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        ch, skip_widths, res = base_channels, [base_channels], image_size
        for level, mult in enumerate(channel_mults):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(stage(ch, base_channels * mult, res))
                ch = base_channels * mult
                skip_widths.append(ch)
            self.down.append(blocks)
            last = level == len(channel_mults) - 1
            self.downsample.append(nn.Identity() if last else Downsample(ch))
            if not last:
                skip_widths.append(ch)
                res //= 2
        self.mid = nn.ModuleList([stage(ch, ch, res, attend=False), stage(ch, ch, res, attend=False)])
        self.mid_attn = SelfAttention(ch, 1, num_groups)  # the middle always attends (paper and official code)
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(len(channel_mults))):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                blocks.append(stage(ch + skip_widths.pop(), base_channels * channel_mults[level], res))
                ch = base_channels * channel_mults[level]
            self.up.append(blocks)
            self.upsample.append(Upsample(ch) if level > 0 else nn.Identity())
            res *= 2 if level > 0 else 1
        assert not skip_widths, "every skip is consumed by an up block"
        self.norm_out = nn.GroupNorm(num_groups, ch)
        self.conv_out = nn.Conv2d(ch, in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # the untrained net predicts 0, the mean of the epsilon target
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                interval: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``(B, C, H, W)``, ``t`` ``(B,)``, ``y`` ``(B,)`` long or ``None`` -> ``(B, C, H, W)``.

        Raises:
            ValueError: if ``y`` is given and the net was built with ``num_classes=0``.
        """
        emb = F.silu(self.time_embed(t, y, interval))  # (B, 4 * base_channels); every block's projection starts with SiLU
        h = self.conv_in(x)
        skips = [h]
        for blocks, downsample in zip(self.down, self.downsample):
            for block in blocks:
                h = block(h, emb)
                skips.append(h)
            if not isinstance(downsample, nn.Identity):
                h = downsample(h)
                skips.append(h)
        h = self.mid[1](self.mid_attn(self.mid[0](h, emb)), emb)
        for blocks, upsample in zip(self.up, self.upsample):
            for block in blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), emb)  # (B, C + C_skip, H, W)
            h = upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))

"""The EDM2 U-Net (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models").

Every layer preserves magnitudes (unit-variance in, unit-variance out, Sec. 3), so activations and weights
neither grow nor shrink in training. The layers (config "G"):

    normalize(w)      w / (eps + ||w|| / sqrt(fan_in)), per output channel                      (eq. 47)
    MPConv            forced weight normalisation: the stored weight is renormalised before every training
                      forward (w <- normalize(w)), then used as normalize(w) / sqrt(fan_in); no biases
    MP-SiLU           silu(x) / 0.596, 0.596^2 = E[silu(x)^2] for x ~ N(0, 1)                    (eq. 81)
    MP-sum(a, b; t)   ((1 - t) a + t b) / sqrt((1 - t)^2 + t^2)                                  (eq. 88)
    MP-cat(a, b; t)   [w_a a, w_b b], w_a = C (1 - t) / sqrt(N_a), w_b = C t / sqrt(N_b),
                      C = sqrt((N_a + N_b) / ((1 - t)^2 + t^2))                                  (eq. 103)
    MP-Fourier        sqrt(2) cos(2 pi (f x + phi)), f ~ N(0, 1), phi ~ U(0, 1) fixed            (eq. 75)

Blocks as Fig. 21; sizes (Table 3) in conf/model/edm2_unet.yaml. ``uncertainty(c_noise)`` is the learned
log-variance u(sigma) of the loss weighting (eq. 21); it lives in the network so optimizer, checkpoints and
resume carry it. ``t`` is EDM's noise label c_noise = ln(sigma) / 4.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.models.attention import attention
from diffusion.models.embeddings import IntervalEmbedding, add_interval
from diffusion.models.unet import _check_image_size, _check_int_sequence
from diffusion.runtime.checks import ConfigError, check_choice, check_float, check_int

#: Table 3 of the paper: size name -> model_channels.
EDM2_SIZES: dict[str, int] = {"XS": 128, "S": 192, "M": 256, "L": 320, "XL": 384, "XXL": 448}
SILU_RMS = 0.596  # sqrt(E[silu(x)^2]) for x ~ N(0, 1)


def normalize(x: torch.Tensor, dim: Sequence[int] | int | None = None, eps: float = 1e-4) -> torch.Tensor:
    """``x`` scaled to an RMS of 1 along ``dim`` (default: all but the first), in float32 for the norm."""
    dim = list(range(1, x.ndim)) if dim is None else dim
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
    norm = eps + norm * math.sqrt(norm.numel() / x.numel())
    return x / norm.to(x.dtype)


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    return F.silu(x) / SILU_RMS


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t**2)


def mp_cat(a: torch.Tensor, b: torch.Tensor, dim: int = 1, t: float = 0.5) -> torch.Tensor:
    n_a, n_b = a.shape[dim], b.shape[dim]
    c = math.sqrt((n_a + n_b) / ((1 - t) ** 2 + t**2))
    return torch.cat([a * (c / math.sqrt(n_a) * (1 - t)), b * (c / math.sqrt(n_b) * t)], dim=dim)


class MPFourier(nn.Module):
    """Random Fourier features of a scalar with unit variance: ``sqrt(2) cos(2 pi (f x + phi))``."""

    def __init__(self, channels: int, bandwidth: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("freqs", 2 * math.pi * torch.randn(channels) * bandwidth)
        self.register_buffer("phases", 2 * math.pi * torch.rand(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B,) -> (B, channels)``."""
        y = x.float()[:, None] * self.freqs.float()[None] + self.phases.float()[None]
        return (y.cos() * math.sqrt(2)).to(x.dtype if x.is_floating_point() else torch.float32)


class MPConv(nn.Module):
    """A magnitude-preserving convolution (``kernel=()``: a linear layer) with forced weight normalisation."""

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, ...]) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, *kernel))

    def forward(self, x: torch.Tensor, gain: float | torch.Tensor = 1.0) -> torch.Tensor:
        w = self.weight.float()
        if self.training:
            with torch.no_grad():
                self.weight.copy_(normalize(w))  # forced: the stored weight keeps unit RMS per output channel
        w = normalize(w) * (gain / math.sqrt(w[0].numel()))  # unit-norm rows: unit variance in, unit out
        w = w.to(x.dtype)
        if w.ndim == 2:
            return x @ w.t()
        return F.conv2d(x, w, padding=w.shape[-1] // 2)


class EDM2Block(nn.Module):
    """An encoder (``enc``) or decoder (``dec``) block (Fig. 21): optional resampling, a residual branch of two
    3x3 MPConvs modulated by the embedding, MP-sum with the skip path, optional cosine self-attention."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, flavor: str = "enc",
                 resample: str = "keep", attention: bool = False, channels_per_head: int = 64,
                 dropout: float = 0.0, res_balance: float = 0.3, attn_balance: float = 0.3,
                 clip_act: float = 256.0) -> None:
        super().__init__()
        self.out_channels, self.flavor, self.resample = out_channels, flavor, resample
        self.num_heads = out_channels // channels_per_head if attention else 0
        self.dropout, self.res_balance, self.attn_balance, self.clip_act = dropout, res_balance, attn_balance, clip_act
        self.emb_gain = nn.Parameter(torch.zeros([]))
        self.conv_res0 = MPConv(out_channels if flavor == "enc" else in_channels, out_channels, (3, 3))
        self.emb_linear = MPConv(emb_channels, out_channels, ())
        self.conv_res1 = MPConv(out_channels, out_channels, (3, 3))
        self.conv_skip = MPConv(in_channels, out_channels, (1, 1)) if in_channels != out_channels else None
        self.attn_qkv = MPConv(out_channels, out_channels * 3, (1, 1)) if self.num_heads else None
        self.attn_proj = MPConv(out_channels, out_channels, (1, 1)) if self.num_heads else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, C_in, H, W)``, ``emb`` ``(B, C_emb)`` -> ``(B, C_out, H', W')``."""
        if self.resample == "down":
            x = F.avg_pool2d(x, 2)
        elif self.resample == "up":
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.flavor == "enc":
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = normalize(x, dim=1)  # pixel norm: the encoder's residual path stays at unit magnitude
        # MP-SiLU's 1 / 0.596 rides on the next convolution's gain (a bias-free convolution is linear): the same
        # block with one elementwise pass over the activations fewer per MP-SiLU, forward and backward
        y = self.conv_res0(F.silu(x), gain=1 / SILU_RMS)
        c = self.emb_linear(emb, gain=self.emb_gain) + 1  # (B, C_out): a per-channel gain, 1 at initialisation
        y = F.silu(y * c[:, :, None, None].to(y.dtype))
        if self.training and self.dropout:
            y = F.dropout(y, p=self.dropout)
        y = self.conv_res1(y, gain=1 / SILU_RMS)
        if self.flavor == "dec" and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = mp_sum(x, y, t=self.res_balance)
        if self.num_heads:
            x = mp_sum(x, self.attention(x), t=self.attn_balance)
        # hardtanh is clamp's forward; its backward is one fused kernel where clamp's takes three passes (its
        # gradient differs only at exactly +-clip_act)
        return F.hardtanh(x, -self.clip_act, self.clip_act) if self.clip_act else x

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """Cosine self-attention: q, k and v pixel-normalised per head, then scaled dot-product attention."""
        batch, channels, height, width = x.shape
        qkv = self.attn_qkv(x).reshape(batch, self.num_heads, -1, 3, height * width)  # type: ignore[misc]
        # each (B, heads, HW, C / heads) with its channels contiguous, which SDPA's fused CPU kernel needs (strided
        # ones fall back to its slower math path); normalised after the copy, along the contiguous last dimension
        # (along the strided one the norm and its backward took 3% of an MNIST-sized training step)
        q, k, v = normalize(qkv.permute(3, 0, 1, 4, 2).contiguous(), dim=-1).unbind(0)
        y = attention(q, k, v)
        return self.attn_proj(y.transpose(2, 3).reshape(batch, channels, height, width))  # type: ignore[misc]


class EDM2UNet(nn.Module):
    """Predicts ``(B, C, H, W)`` from ``x_t`` ``(B, C, H, W)``, ``t`` ``(B,)`` and optional labels ``y`` ``(B,)``.

    Settings: see conf/model/edm2_unet.yaml (in_channels and image_size come from the data).

    Raises:
        ConfigError: naming the ``model.*`` (or ``data.*``) key of an invalid argument.
    """

    def __init__(self, in_channels: int, image_size: int, size: str = "XS", model_channels: int | None = None,
                 channel_mults: Sequence[int] = (1, 2, 3, 4), num_blocks: int = 3,
                 attention_resolutions: Sequence[int] = (16, 8), channels_per_head: int = 64,
                 dropout: float = 0.0, label_balance: float = 0.5, concat_balance: float = 0.5,
                 logvar_channels: int = 128, num_classes: int = 0, two_times: bool = False) -> None:
        super().__init__()
        widths, resolutions, attention = _check_arguments(
            in_channels, image_size, size, model_channels, channel_mults, num_blocks, attention_resolutions,
            channels_per_head, dropout)
        self.in_channels, self.image_size = in_channels, image_size
        self.num_classes = check_int(num_classes, "model.num_classes", minimum=0)
        self.label_balance = check_float(label_balance, "model.label_balance", 0.0, 1.0)
        self.concat_balance = check_float(concat_balance, "model.concat_balance", 0.0, 1.0)
        emb_channels = max(widths)
        block = dict(emb_channels=emb_channels, channels_per_head=channels_per_head, dropout=dropout)
        self.out_gain = nn.Parameter(torch.zeros([]))
        self.emb_fourier = MPFourier(widths[0])
        self.emb_noise = MPConv(widths[0], emb_channels, ())
        self.interval_embed = IntervalEmbedding.build(two_times, widths[0], emb_channels)
        self.emb_label = MPConv(num_classes, emb_channels, ()) if num_classes else None
        self.conv_in = MPConv(in_channels + 1, widths[0], (3, 3))  # + a constant channel: a bias in effect
        skip_widths = self._build_encoder(widths, resolutions, attention, num_blocks, block)
        width = self._build_decoder(widths, resolutions, attention, num_blocks, block, skip_widths)
        self.conv_out = MPConv(width, in_channels, (3, 3))
        self.logvar_fourier = MPFourier(check_int(logvar_channels, "model.logvar_channels", minimum=1))
        self.logvar_linear = MPConv(logvar_channels, 1, ())

    def _build_encoder(self, widths: list[int], resolutions: list[int], attention: tuple[int, ...],
                       num_blocks: int, block: dict) -> list[int]:
        """Per level: a downsampling block (after the first), ``num_blocks`` blocks; returns the skips' widths."""
        self.enc, skip_widths, width = nn.ModuleList(), [widths[0]], widths[0]
        for level, (out, res) in enumerate(zip(widths, resolutions)):
            if level:
                self.enc.append(EDM2Block(width, width, flavor="enc", resample="down", **block))
                skip_widths.append(width)
            for _ in range(num_blocks):
                self.enc.append(EDM2Block(width, out, flavor="enc", attention=res in attention, **block))
                width = out
                skip_widths.append(width)
        return skip_widths

    def _build_decoder(self, widths: list[int], resolutions: list[int], attention: tuple[int, ...],
                       num_blocks: int, block: dict, skip_widths: list[int]) -> int:
        """Per level, deepest first: two blocks (the first attending) at the bottom, else an upsampling block;
        then ``num_blocks + 1`` blocks, each eating a skip (MP-cat). Returns the last width."""
        self.dec, self.dec_takes_skip, width = nn.ModuleList(), [], widths[-1]
        for level in reversed(range(len(widths))):
            if level == len(widths) - 1:
                self.dec.extend([EDM2Block(width, width, flavor="dec", attention=True, **block),
                                 EDM2Block(width, width, flavor="dec", **block)])
                self.dec_takes_skip += [False, False]
            else:
                self.dec.append(EDM2Block(width, width, flavor="dec", resample="up", **block))
                self.dec_takes_skip.append(False)
            for _ in range(num_blocks + 1):
                self.dec.append(EDM2Block(width + skip_widths.pop(), widths[level], flavor="dec",
                                          attention=resolutions[level] in attention, **block))
                self.dec_takes_skip.append(True)
                width = widths[level]
        assert not skip_widths, "every skip is eaten by a decoder block"
        return width

    def embedding(self, t: torch.Tensor, y: torch.Tensor | None, interval: torch.Tensor | None = None
                  ) -> torch.Tensor:
        """MP-SiLU(MP-sum(noise embedding (+ the interval's), label embedding)): ``(B, emb_channels)``."""
        emb = add_interval(self.emb_noise(self.emb_fourier(t)), self.interval_embed, t, interval)
        if self.emb_label is None:
            if y is not None:
                raise ValueError("class labels y were given to a model built with num_classes=0; pass y=None or "
                                 "set model.num_classes to the data set's number of classes")
            return mp_silu(emb)
        if y is None:
            y = torch.full_like(t, self.num_classes, dtype=torch.long)
        one_hot = F.one_hot(y, self.num_classes + 1)[:, : self.num_classes].to(emb.dtype)  # null label: zeros
        emb = mp_sum(emb, self.emb_label(one_hot * math.sqrt(self.num_classes)), t=self.label_balance)
        return mp_silu(emb)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                interval: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``(B, C, H, W)``, ``t`` ``(B,)`` (c_noise), ``y`` ``(B,)`` long or ``None`` -> ``(B, C, H, W)``."""
        emb = self.embedding(t, y, interval)
        h = self.conv_in(torch.cat([x, torch.ones_like(x[:, :1])], dim=1))
        skips = [h]
        for block in self.enc:
            h = block(h, emb)
            skips.append(h)
        for block, takes_skip in zip(self.dec, self.dec_takes_skip):
            if takes_skip:
                h = mp_cat(h, skips.pop(), t=self.concat_balance)
            h = block(h, emb)
        return self.conv_out(h, gain=self.out_gain)

    def uncertainty(self, t: torch.Tensor) -> torch.Tensor:
        """The learned log-variance u(sigma) for noise labels ``t`` ``(B,)``: ``(B,)``."""
        return self.logvar_linear(self.logvar_fourier(t)).reshape(-1)


def _check_arguments(in_channels: int, image_size: int, size: str, model_channels: int | None,
                     channel_mults: Sequence[int], num_blocks: int, attention_resolutions: Sequence[int],
                     channels_per_head: int, dropout: float) -> tuple[list[int], list[int], tuple[int, ...]]:
    """The widths and sides of the levels and the attention sides, or a :class:`ConfigError` naming the key."""
    check_int(in_channels, "model.in_channels", minimum=1)
    check_int(image_size, "data.image_size", minimum=1)
    base = EDM2_SIZES[check_choice(size, "model.size", tuple(EDM2_SIZES))]
    base = base if model_channels is None else check_int(model_channels, "model.model_channels", minimum=1)
    mults = _check_int_sequence(channel_mults, "model.channel_mults", minimum=1, allow_empty=False)
    check_int(num_blocks, "model.num_blocks", minimum=1)
    attention = _check_int_sequence(attention_resolutions, "model.attention_resolutions", minimum=1)
    check_int(channels_per_head, "model.channels_per_head", minimum=1)
    if check_float(dropout, "model.dropout", minimum=0.0) >= 1.0:
        raise ConfigError(f"model.dropout must be in [0, 1), got {dropout!r}")
    _check_image_size(image_size, mults)
    widths = [base * mult for mult in mults]
    resolutions = [image_size // 2**level for level in range(len(mults))]
    attended = [(w, r) for w, r in zip(widths, resolutions) if r in attention] + [(widths[-1], resolutions[-1])]
    for width, res in attended:
        if width % channels_per_head:
            raise ConfigError(f"model.channels_per_head={channels_per_head} must divide the {width} channels at the "
                              f"{res}x{res} attention level (model.model_channels * model.channel_mults)")
    return widths, resolutions, attention

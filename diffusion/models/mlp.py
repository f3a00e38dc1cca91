"""Time-conditioned residual MLP for low-dimensional point data (2-D toy distributions)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.models.embeddings import TimeEmbedding
from diffusion.runtime.checks import ConfigError, check_float, check_int


class MLPBlock(nn.Module):
    """Pre-norm residual block ``h + W2 dropout(SiLU(W1 LayerNorm(h) + time))``: the time is added in every block so
    the noise level steers each layer (no normalised feature maps here that would need the U-Net's scale-shift).
    """

    def __init__(self, hidden_dim: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_dim)
        self.fc1 = nn.Linear(hidden_dim, hidden_dim)
        self.emb_proj = nn.Linear(emb_dim, hidden_dim)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden_dim, hidden_dim)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """``h`` ``(B, hidden_dim)``, ``emb`` ``(B, emb_dim)`` already through SiLU -> ``(B, hidden_dim)``."""
        z = self.fc1(self.norm(h)) + self.emb_proj(emb)
        return h + self.fc2(self.dropout(F.silu(z)))


class MLP(nn.Module):
    """Predicts ``(B, dim)`` (noise, ``x_0`` or ``v``: the method decides) from points ``x_t`` and ``t``.

    Settings: see conf/model/mlp.yaml (dim comes from the data). Raises ConfigError naming the key of a bad argument.
    """

    def __init__(
        self,
        dim: int = 2,
        hidden_dim: int = 256,
        num_layers: int = 4,
        time_embed_dim: int = 128,
        dropout: float = 0.0,
        num_classes: int = 0,
        two_times: bool = False,
    ) -> None:
        super().__init__()
        self.dim = check_int(dim, "model.dim", minimum=1)
        check_int(hidden_dim, "model.hidden_dim", minimum=1)
        check_int(num_layers, "model.num_layers", minimum=1)
        check_int(time_embed_dim, "model.time_embed_dim", minimum=2)
        dropout = check_float(dropout, "model.dropout", minimum=0.0)
        if dropout >= 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {dropout!r}")
        self.num_classes = check_int(num_classes, "model.num_classes", minimum=0)

        self.time_embed = TimeEmbedding(time_embed_dim, time_embed_dim, num_classes, two_times)
        self.fc_in = nn.Linear(dim, hidden_dim)
        self.blocks = nn.ModuleList([MLPBlock(hidden_dim, time_embed_dim, dropout) for _ in range(num_layers)])
        self.norm_out = nn.LayerNorm(hidden_dim)
        self.fc_out = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                interval: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``(B, dim)``, ``t`` ``(B,)``, ``y`` ``(B,)`` long or ``None``, ``interval`` ``(B,)`` or ``None`` ->
        ``(B, dim)``.

        Raises:
            ValueError: if ``y`` is given and the net was built with ``num_classes=0``.
        """
        emb = F.silu(self.time_embed(t, y, interval))  # (B, time_embed_dim)
        h = self.fc_in(x)  # (B, hidden_dim)
        for block in self.blocks:
            h = block(h, emb)
        return self.fc_out(F.silu(self.norm_out(h)))

"""A record of the dtypes attention runs in: the query's dtype at every ``scaled_dot_product_attention`` call."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


class AttentionDtypes(TorchFunctionMode):
    """``with AttentionDtypes() as seen: ...``, then ``seen.dtypes``: one query dtype per attention call."""

    def __init__(self) -> None:
        super().__init__()
        self.dtypes: list[torch.dtype] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            self.dtypes.append(args[0].dtype)
        return func(*args, **(kwargs or {}))

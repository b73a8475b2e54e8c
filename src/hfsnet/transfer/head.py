"""What fitting a head on cached descriptors needs beyond the model's own head."""

from __future__ import annotations

import torch

from hfsnet.models.head import LevelHead


@torch.no_grad()
def fold_standardization(head: LevelHead, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Make ``head`` read raw descriptors: it was fitted on ``(x - mean) / std``."""
    layer = head.first_linear
    weight = layer.weight.double() / std.double()
    bias = layer.bias.double() - weight @ mean.double()
    layer.weight.copy_(weight)
    layer.bias.copy_(bias)

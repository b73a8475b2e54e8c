"""Test-time augmentation: classify an image and its mirror image, average the logits."""

from __future__ import annotations

import torch
from torch import nn


class FlipAverage(nn.Module):
    """Wraps a classifier: logits = (model(x) + model(x mirrored left-right)) / 2.

    Both views run as one batch of 2N images (one pass through the net is cheaper than two on
    CPU and GPU alike, for the batch sizes evaluation uses).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.training = model.training  # so restoring the wrapper's mode restores the model's

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        both = self.model(torch.cat([x, x.flip(-1)]))
        plain, mirrored = both.chunk(2)
        return (plain + mirrored) / 2

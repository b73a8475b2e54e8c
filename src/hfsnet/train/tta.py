"""Test-time augmentation: classify several views of each image and average the logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FlipAverage(nn.Module):
    """Wraps a classifier: the logits of each image averaged with those of its mirror image and,
    with ``translate``, of copies shifted by one pixel up-left and down-right (reflect-padded).

    Weights are airbench's: the plain pair 1/2, each shifted pair 1/4. All views run as one
    batch (one pass through the net is cheaper than several on CPU and GPU alike, for the batch
    sizes evaluation uses).
    """

    def __init__(self, model: nn.Module, *, translate: bool = False) -> None:
        super().__init__()
        self.model = model
        self.translate = translate
        self.training = model.training  # so restoring the wrapper's mode restores the model's

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        views = [x]
        weights = [1.0]
        if self.translate:
            padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
            views += [padded[..., :-2, :-2], padded[..., 2:, 2:]]
            weights = [0.5, 0.25, 0.25]
        batch = torch.cat(views + [v.flip(-1) for v in views])
        logits = self.model(batch).unflatten(0, (2, len(views), len(x))).mean(0)
        return sum(w * view for w, view in zip(weights, logits, strict=True))

"""An exponential moving average of a model's weights, for evaluation."""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    """``shadow = decay * shadow + (1 - decay) * current`` over every floating-point entry of
    the model's state dict (weights and batch-norm running statistics), after each step.

    Integer entries (batch-norm step counters) are not averaged; :meth:`averaged_model` takes
    them from the live model.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()
                       if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for key, value in model.state_dict().items():
            if key in self.shadow:
                self.shadow[key].lerp_(value.detach(), 1 - self.decay)

    def averaged_model(self, model: nn.Module) -> nn.Module:
        """A copy of ``model`` holding the averaged weights, in eval mode."""
        averaged = copy.deepcopy(model)
        averaged.load_state_dict({**model.state_dict(), **self.shadow})
        return averaged.eval()

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore from :meth:`state_tensors` (e.g. a checkpoint section)."""
        missing = set(self.shadow) - set(tensors)
        if missing:
            raise KeyError(f"weight average lacks {sorted(missing)[:3]}")
        for key, value in self.shadow.items():
            value.copy_(tensors[key])

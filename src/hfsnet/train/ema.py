"""Weight averages: an exponential moving average for evaluation, and lookahead."""

from __future__ import annotations

import copy

import torch
from torch import nn


def _copy_into(state: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor],
               what: str) -> None:
    """Overwrite every entry of ``state`` in place from ``tensors`` (a checkpoint section)."""
    missing = set(state) - set(tensors)
    if missing:
        raise KeyError(f"{what} lacks {sorted(missing)[:3]}")
    for key, value in state.items():
        value.copy_(tensors[key])


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
        _copy_into(self.shadow, tensors, "weight average")


class Lookahead:
    """Lookahead with airbench's schedule: every ``every`` steps the slow weights move towards
    the fast ones, ``slow = d * slow + (1 - d) * fast``, and the fast weights restart from
    them. ``d = 0.95**every * (step / total_steps)**3`` grows from 0 (plain training early on)
    to 0.77 at the end, so the last epochs average out the noise of a high learning rate.
    The run ends on the slow weights. Floating-point buffers (BN statistics) follow too.
    """

    def __init__(self, model: nn.Module, every: int, total_steps: int) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = every
        self.total_steps = total_steps
        self.slow = {k: v.detach().clone() for k, v in model.state_dict().items()
                     if v.is_floating_point()}

    def decay(self, step: int) -> float:
        return 0.95**self.every * (step / self.total_steps) ** 3

    @torch.no_grad()
    def after_step(self, model: nn.Module, step: int) -> None:
        """Call after optimizer step number ``step`` (1-based) of ``total_steps``."""
        if step % self.every == 0:
            decay = self.decay(step)
            for key, value in model.state_dict().items():
                if key in self.slow:
                    self.slow[key].lerp_(value, 1 - decay)
                    value.copy_(self.slow[key])
        if step >= self.total_steps:
            model.load_state_dict({**model.state_dict(), **self.slow})

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.slow)

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        _copy_into(self.slow, tensors, "lookahead state")

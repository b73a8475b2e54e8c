"""A head over chosen pooled stages, and the ``level-head`` registry entry that lets a checkpoint
whose head was replaced by one rebuild through the registry like any other model.

``level-head`` wraps any registered trunk: its options name the trunk (``trunk``,
``trunk_options``) and the head (``levels``, ``pool``, ``hidden``). The rebuilt model is the
trunk's own class with ``.head`` swapped, so trunk weights keep their names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from hfsnet.models import FeatureClassifier, create_model
from hfsnet.models.registry import register
from hfsnet.transfer.errors import CacheError
from hfsnet.transfer.levels import level_widths, pool_levels

LEVEL_HEAD_MODEL = "level-head"


class LevelHead(nn.Module):
    """Pool the selected stages, concatenate, an optional hidden ReLU layer, then classify.

    With ``gap`` over every stage and no hidden layer this computes what ``FusionHead`` (fuse on,
    no hidden layer) does.
    """

    def __init__(self, stage_channels: Sequence[int], levels: Sequence[int], pool: str,
                 num_classes: int, hidden: int = 0) -> None:
        super().__init__()
        self.levels = list(levels)
        self.pool = pool
        width = sum(level_widths(stage_channels, self.levels, pool))
        self.hidden = (nn.Sequential(nn.Linear(width, hidden), nn.ReLU(inplace=True)) if hidden
                       else nn.Sequential())
        self.classifier = nn.Linear(hidden or width, num_classes)

    @property
    def first_linear(self) -> nn.Linear:
        """The layer that reads the descriptor (feature standardisation folds into it)."""
        return self.hidden[0] if len(self.hidden) else self.classifier

    def forward_descriptor(self, descriptor: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.hidden(descriptor))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.forward_descriptor(pool_levels(features, self.levels, self.pool))


@torch.no_grad()
def fold_standardization(head: LevelHead, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Make ``head`` read raw descriptors: it was fitted on ``(x - mean) / std``."""
    layer = head.first_linear
    weight = layer.weight.double() / std.double()
    bias = layer.bias.double() - weight @ mean.double()
    layer.weight.copy_(weight)
    layer.bias.copy_(bias)


def trunk_spec(model: FeatureClassifier) -> tuple[str, dict[str, Any]]:
    """(registered name, options) of the model's trunk, looking through a ``level-head``."""
    if model.model_name == LEVEL_HEAD_MODEL:
        options = model.model_options
        return options["trunk"], dict(options.get("trunk_options") or {})
    return model.model_name, dict(model.model_options)


def install_head(model: FeatureClassifier, head: LevelHead) -> FeatureClassifier:
    """Replace ``model.head`` with ``head`` and record how the registry rebuilds the result."""
    trunk, trunk_options = trunk_spec(model)
    device = next(model.parameters()).device
    model.head = head.to(device)
    model.model_name = LEVEL_HEAD_MODEL
    hidden = head.first_linear.out_features if len(head.hidden) else 0
    model.model_options = {"trunk": trunk, "trunk_options": trunk_options, "levels": head.levels,
                           "pool": head.pool, "hidden": hidden}
    return model


@register(LEVEL_HEAD_MODEL, "a registered trunk with a linear/MLP head over chosen pooled stages "
          "(written by fit-head and finetune --head-init cache)")
def build_level_head_model(
    num_classes: int = 10,
    in_channels: int = 3,
    *,
    trunk: str,
    trunk_options: dict[str, Any] | None = None,
    levels: Sequence[int] = (),
    pool: str = "gap",
    hidden: int = 0,
    image_size: int | None = None,
) -> FeatureClassifier:
    """The trunk ``trunk`` built with ``trunk_options``, its head a :class:`LevelHead`."""
    if trunk == LEVEL_HEAD_MODEL:
        raise CacheError(f"model {LEVEL_HEAD_MODEL!r}: the trunk must be a plain model")
    options = dict(trunk_options or {})
    if image_size is not None:
        options.setdefault("image_size", image_size)
    model = create_model(trunk, num_classes=num_classes, in_channels=in_channels, **options)
    chosen = list(levels) or list(range(1, len(model.stage_channels()) + 1))
    head = LevelHead(model.stage_channels(), chosen, pool, num_classes, hidden)
    return install_head(model, head)

"""The interface every hfsnet classifier shares."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hfsnet.models.options import ModelOptions


class FeatureClassifier(nn.Module):
    """A trunk that yields one feature map per stage, and a head that turns them into logits.

    Subclasses build ``self.head`` (a module whose last layer is ``self.head.classifier``, an
    ``nn.Linear``) and implement :meth:`forward_features`. Everything outside ``self.head`` is the
    trunk: fine-tuning gives the two groups different learning rates.
    """

    head: nn.Module

    def __init__(self) -> None:
        super().__init__()
        # Set by the registry so that a checkpoint can rebuild the model through it.
        self.model_name = ""
        self.model_options: dict[str, Any] = {}

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per-stage feature maps, shallowest first."""
        raise NotImplementedError

    def forward_head(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @property
    def num_classes(self) -> int:
        return self.head.classifier.out_features

    @property
    def num_features(self) -> int:
        """Width of the vector the classifier reads."""
        return self.head.classifier.in_features

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the final linear layer with a freshly initialised one for ``num_classes``."""
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        old = self.head.classifier
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
        self.head.classifier = new.to(device=old.weight.device, dtype=old.weight.dtype)

    def trunk_parameters(self) -> list[nn.Parameter]:
        head_ids = {id(p) for p in self.head.parameters()}
        return [p for p in self.parameters() if id(p) not in head_ids]

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.head.parameters())

    def stage_names(self) -> list[str]:
        """Names of the levels :meth:`forward_features` returns, shallowest first."""
        return [f"stage{i + 1}" for i in range(len(self.stage_channels()))]

    def stage_channels(self) -> list[int]:
        """Channels of each level :meth:`forward_features` returns."""
        raise NotImplementedError

    def stage_modules(self) -> list[list[nn.Module]]:
        """The trunk's modules per stage, shallowest first: together they hold every trainable
        trunk parameter once and none of the head's. Modules before the first stage (a stem)
        count as part of it."""
        raise NotImplementedError


class StagedClassifier(FeatureClassifier):
    """A stem (or none) and a list of blocks; every block's output is one level.

    Subclasses set ``self.stem``, ``self.blocks`` (an ``nn.ModuleList``) and
    ``self.level_channels`` (each block's output channels) before use.
    """

    stem: nn.Module | None
    blocks: nn.ModuleList
    level_channels: list[int]

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.stem is not None:
            x = self.stem(x)
        features = []
        for block in self.blocks:
            x = block(x)
            features.append(x)
        return features

    def stage_channels(self) -> list[int]:
        return list(self.level_channels)

    def stage_modules(self) -> list[list[nn.Module]]:
        stages: list[list[nn.Module]] = [[block] for block in self.blocks]
        if self.stem is not None:
            stages[0].insert(0, self.stem)
        return stages


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


Constructor = Callable[[int, int, Any], FeatureClassifier]


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: ``constructor(num_classes, in_channels, options)`` builds it from an
    ``options`` instance; ``defaults`` are the options baked into this name (a preset), which
    callers may override."""

    name: str
    constructor: Constructor
    options: type[ModelOptions]
    description: str
    defaults: Mapping[str, Any] = field(default_factory=dict)

"""The seed's baseline CNN (design note, section 3.6), layer for layer."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from hfsnet.models.base import FeatureClassifier
from hfsnet.models.registry import register


def _block(in_ch: int, out_ch: int, dropout: float) -> nn.Sequential:
    """Two valid 3x3 convs with ReLU, 2x2 max pool, dropout: one Keras block of the seed."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_ch, out_ch, 3),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Dropout(dropout),
    )


def _side_after_blocks(side: int) -> int:
    for _ in range(2):
        side = (side - 4) // 2  # two valid 3x3 convs (-2 px each), then a 2x2 pool
    if side < 1:
        raise ValueError("seed-cnn needs inputs of at least 12x12 pixels")
    return side


class FlattenHead(nn.Module):
    """Flatten the last stage, Dense-ReLU-Dropout, classifier (the seed's Keras head)."""

    def __init__(self, in_features: int, hidden: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.hidden = nn.Sequential(
            nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)
        )
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.hidden(features[-1]))


class SeedCNN(FeatureClassifier):
    """Conv32-Conv32-Pool-Drop, Conv64-Conv64-Pool-Drop, Dense512-Drop, Dense: 890,410 params
    for 3x32x32 inputs and 10 classes (the count Keras reports for the seed's model)."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        *,
        image_size: int = 32,
        widths: tuple[int, int] = (32, 64),
        hidden: int = 512,
        dropout: float = 0.25,
        head_dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.widths = tuple(widths)
        self.stages = nn.ModuleList(
            [_block(in_channels, widths[0], dropout), _block(widths[0], widths[1], dropout)]
        )
        side = _side_after_blocks(image_size)
        self.head = FlattenHead(widths[1] * side * side, hidden, num_classes, head_dropout)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features

    def stage_channels(self) -> list[int]:
        return list(self.widths)


register("seed-cnn", "the seed's baseline Keras CNN (no sharing), 890k params at 3x32x32")(SeedCNN)

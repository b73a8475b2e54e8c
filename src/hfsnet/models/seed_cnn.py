"""The seed's baseline CNN (design note, section 3.6), layer for layer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from hfsnet.models.base import ModelEntry, StagedClassifier
from hfsnet.models.options import (
    ModelOptions,
    check_fraction,
    check_int,
    check_ints,
    refuse,
)

MIN_IMAGE_SIZE = 16  # px: the smallest side that leaves one pixel after both blocks


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


def side_after_blocks(side: int) -> int:
    for _ in range(2):
        side = (side - 4) // 2  # two valid 3x3 convs (-2 px each), then a 2x2 pool
    return side


@dataclass
class SeedCNNOptions(ModelOptions):
    """``image_size``: the input side (the flattening head depends on it). ``widths``: the two
    blocks' widths. ``hidden``: the dense layer's width. Dropouts: after each block, in the
    head."""

    image_size: int = 32
    widths: Sequence[int] = (32, 64)
    hidden: int = 512
    dropout: float = 0.25
    head_dropout: float = 0.5

    def validate(self) -> None:
        check_int("image_size", self.image_size)
        if side_after_blocks(self.image_size) < 1:
            raise refuse("image_size", f"at least {MIN_IMAGE_SIZE} (each of seed-cnn's two "
                         "blocks takes 4 px off a side, then halves it)", self.image_size)
        check_ints("widths", self.widths, lengths=[2])
        check_int("hidden", self.hidden)
        check_fraction("dropout", self.dropout)
        check_fraction("head_dropout", self.head_dropout)


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


class SeedCNN(StagedClassifier):
    """Conv32-Conv32-Pool-Drop, Conv64-Conv64-Pool-Drop, Dense512-Drop, Dense: 890,410 params
    for 3x32x32 inputs and 10 classes (the count Keras reports for the seed's model).

    The blocks live under ``stages`` (not ``blocks``), the name in every saved seed-cnn
    checkpoint's weights; ``blocks`` reads them under the name the other families use.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3,
                 options: SeedCNNOptions | None = None) -> None:
        super().__init__()
        o = options or SeedCNNOptions()
        self.stem = None
        self.level_channels = list(o.widths)
        self.stages = nn.ModuleList(
            [_block(in_channels, o.widths[0], o.dropout), _block(o.widths[0], o.widths[1],
                                                                  o.dropout)]
        )
        side = side_after_blocks(o.image_size)
        self.head = FlattenHead(o.widths[1] * side * side, o.hidden, num_classes, o.head_dropout)

    @property
    def blocks(self) -> nn.ModuleList:  # type: ignore[override]
        return self.stages


ENTRIES = (
    ModelEntry("seed-cnn", SeedCNN, SeedCNNOptions,
               "the seed's baseline Keras CNN (no sharing), 890k params at 3x32x32"),
)

"""The head every family shares: pool chosen stages, concatenate, an optional hidden layer,
classify. Its input vector (the "descriptor") is also what the feature cache stores.

A descriptor is the concatenation, in stage order, of each selected stage's pooled map: ``gap``
averages a stage to one value per channel, ``max`` takes each channel's maximum, ``2x2``
averages to four values per channel (channel-major, then row, column).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

POOL_CELLS = {"gap": 1, "max": 1, "2x2": 4}  # descriptor values per channel
POOLS = tuple(POOL_CELLS)


def fused_levels(n_stages: int, fuse: bool) -> list[int]:
    """Every stage (1-based) when the head fuses them, else the last one only."""
    return list(range(1, n_stages + 1)) if fuse else [n_stages]


def level_widths(stage_channels: Sequence[int], levels: Sequence[int], pool: str) -> list[int]:
    """Descriptor columns contributed by each selected stage."""
    cells = POOL_CELLS[pool]
    return [stage_channels[level - 1] * cells for level in levels]


def _pool(feature: torch.Tensor, pool: str) -> torch.Tensor:
    if pool == "max":
        # amax, as hfs-air's head has always pooled (adaptive_max_pool2d gives the same
        # values but sends a tie's gradient to one position only).
        return feature.amax((2, 3))
    side = 2 if pool == "2x2" else 1
    return F.adaptive_avg_pool2d(feature, side).flatten(1)


def pool_levels(features: Sequence[torch.Tensor], levels: Sequence[int], pool: str) -> torch.Tensor:
    """N x D descriptor from per-stage maps (``features[i]`` is stage ``i + 1``)."""
    return torch.cat([_pool(features[level - 1], pool) for level in levels], 1)


class LevelHead(nn.Module):
    """Pool the stages ``levels`` (1-based) with ``pool``, concatenate, an optional hidden
    Linear+ReLU layer (``hidden`` wide; 0 for none), optional dropout, the classifier (with or
    without ``bias``), its logits multiplied by ``scale``.

    Its weights are ``hidden.0`` (the hidden layer) and ``classifier``, whichever family uses it.
    """

    def __init__(self, stage_channels: Sequence[int], levels: Sequence[int], pool: str,
                 num_classes: int, hidden: int = 0, *, dropout: float = 0.0, bias: bool = True,
                 scale: float = 1.0) -> None:
        super().__init__()
        if pool not in POOL_CELLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        if not levels or not all(1 <= level <= len(stage_channels) for level in levels):
            raise ValueError(f"levels must be stage numbers in 1..{len(stage_channels)}, "
                             f"got {list(levels)}")
        self.levels = list(levels)
        self.pool = pool
        self.hidden_width = hidden
        self.scale = scale
        width = sum(level_widths(stage_channels, self.levels, pool))
        layers: list[nn.Module] = []
        if hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
            width = hidden
        if dropout:
            layers.append(nn.Dropout(dropout))
        self.hidden = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes, bias=bias)

    @property
    def first_linear(self) -> nn.Linear:
        """The layer that reads the descriptor (feature standardisation folds into it)."""
        return self.hidden[0] if self.hidden_width else self.classifier

    def pooled(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """The descriptor the head reads: N x (sum of the selected stages' widths)."""
        return pool_levels(features, self.levels, self.pool)

    def forward_descriptor(self, descriptor: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(self.hidden(descriptor))
        return logits * self.scale if self.scale != 1 else logits

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.forward_descriptor(self.pooled(features))

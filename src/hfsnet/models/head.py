"""The head every family shares: pool chosen stages, concatenate, an optional hidden layer,
classify. Its input vector (the "descriptor") is also what the feature cache stores.

A descriptor is the concatenation, in stage order, of each selected stage's pooled map: ``gap``
averages a stage to one value per channel, ``max`` takes each channel's maximum, ``2x2``
averages to four values per channel (channel-major, then row, column).

A head may carry a :class:`DescriptorTransform` (``head.transform``; identity, with no state-dict
keys, when it has none): a fixed, saved map from the descriptor to what its first linear layer
reads, as ridge heads fitted on cached descriptors use (kept columns, centring and L2
normalisation, random ReLU features).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

POOL_CELLS = {"gap": 1, "max": 1, "2x2": 4}  # descriptor values per channel
POOLS = tuple(POOL_CELLS)
# A DescriptorTransform's settings and their "off" values: ``keep`` columns (0: all), subtract a
# saved ``shift``, divide by a saved ``scale``, ``l2``-normalise each row, ``expand`` to that many
# random ReLU features (0: none), appended to the input when ``expand_input``.
TRANSFORM_DEFAULTS: dict[str, Any] = {"keep": 0, "shift": False, "scale": False, "l2": False,
                                      "expand": 0, "expand_input": False}


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


class DescriptorTransform(nn.Module):
    """A fixed map of ``width``-wide descriptors: keep the columns in the ``columns`` buffer, then
    ``(x - shift) / scale``, then divide each row by its L2 norm, then ``relu(x @ projection)``
    (``expand`` wide; after the input when ``expand_input``). Each step is off unless its setting
    (:data:`TRANSFORM_DEFAULTS`) asks for it, and only the steps in use have buffers. Nothing is
    trained: the buffers are set by whoever fits the head and saved with it. Buffers are float32
    and follow the input's dtype, so the map runs in float64 as well."""

    def __init__(self, width: int, **settings: Any) -> None:
        super().__init__()
        unknown = set(settings) - set(TRANSFORM_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown transform settings {sorted(unknown)}")
        self.settings = {**TRANSFORM_DEFAULTS, **settings}
        keep, expand = self.settings["keep"], self.settings["expand"]
        if not 0 <= keep <= width:
            raise ValueError(f"transform keep must be in 0..{width}, got {keep}")
        self.in_width = width
        kept = keep or width
        if keep:
            self.register_buffer("columns", torch.arange(keep))
        if self.settings["shift"]:
            self.register_buffer("shift", torch.zeros(kept))
        if self.settings["scale"]:
            self.register_buffer("scale", torch.ones(kept))
        if expand:
            self.register_buffer("projection", torch.zeros(kept, expand))
        self.out_width = kept
        if expand:
            self.out_width = expand + (kept if self.settings["expand_input"] else 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.settings
        if s["keep"]:
            x = x.index_select(1, self.columns)
        if s["shift"]:
            x = x - self.shift.to(x.dtype)
        if s["scale"]:
            x = x / self.scale.to(x.dtype)
        if s["l2"]:
            x = F.normalize(x, dim=1)
        if s["expand"]:
            features = torch.relu(x @ self.projection.to(x.dtype))
            x = torch.cat([x, features], 1) if s["expand_input"] else features
        return x


class LevelHead(nn.Module):
    """Pool the stages ``levels`` (1-based) with ``pool``, concatenate, an optional hidden
    Linear+ReLU layer (``hidden`` wide; 0 for none), optional dropout, the classifier (with or
    without ``bias``), its logits multiplied by ``scale``.

    Its weights are ``hidden.0`` (the hidden layer) and ``classifier``, whichever family uses it.
    ``transform`` (settings of a :class:`DescriptorTransform`; None: none) puts a fixed map
    between the descriptor and those layers.
    """

    def __init__(self, stage_channels: Sequence[int], levels: Sequence[int], pool: str,
                 num_classes: int, hidden: int = 0, *, dropout: float = 0.0, bias: bool = True,
                 scale: float = 1.0, transform: Mapping[str, Any] | None = None) -> None:
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
        self.transform: nn.Module = nn.Identity()
        if transform:
            self.transform = DescriptorTransform(width, **transform)
            width = self.transform.out_width
        layers: list[nn.Module] = []
        if hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
            width = hidden
        if dropout:
            layers.append(nn.Dropout(dropout))
        self.hidden = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes, bias=bias)

    @property
    def transform_settings(self) -> dict[str, Any] | None:
        """The settings of the head's descriptor transform, None when it has none."""
        transform = self.transform
        return dict(transform.settings) if isinstance(transform, DescriptorTransform) else None

    @property
    def first_linear(self) -> nn.Linear:
        """The layer that reads the descriptor, after the transform if there is one (feature
        standardisation folds into it)."""
        return self.hidden[0] if self.hidden_width else self.classifier

    def pooled(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """The descriptor the head reads: N x (sum of the selected stages' widths)."""
        return pool_levels(features, self.levels, self.pool)

    def forward_descriptor(self, descriptor: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(self.hidden(self.transform(descriptor)))
        return logits * self.scale if self.scale != 1 else logits

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.forward_descriptor(self.pooled(features))

"""Which stages a descriptor reads and how each is pooled: the layout the cache and its heads share.

A descriptor is the concatenation, in stage order, of each selected stage's pooled map: ``gap``
averages a stage to one value per channel, ``2x2`` to four (channel-major, then row, column).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from hfsnet.transfer.errors import CacheError

POOL_SIDES = {"gap": 1, "2x2": 2}  # output side of the adaptive average pool, in cells
POOLS = tuple(POOL_SIDES)


def parse_levels(text: str, n_stages: int) -> list[int]:
    """``all``, ``last`` or comma-separated 1-based stage numbers -> sorted stage numbers."""
    if text == "all":
        return list(range(1, n_stages + 1))
    if text == "last":
        return [n_stages]
    try:
        levels = sorted({int(part) for part in text.split(",")})
    except ValueError:
        raise CacheError(f"--levels: expected 'all', 'last' or stage numbers like 1,3; "
                         f"got {text!r}") from None
    if not levels or levels[0] < 1 or levels[-1] > n_stages:
        raise CacheError(f"--levels: stage numbers must lie in 1..{n_stages} (the trunk has "
                         f"{n_stages} stages), got {text!r}")
    return levels


def check_pool(pool: str) -> str:
    if pool not in POOL_SIDES:
        raise CacheError(f"--pool: expected one of {', '.join(POOLS)}, got {pool!r}")
    return pool


def level_widths(stage_channels: Sequence[int], levels: Sequence[int], pool: str) -> list[int]:
    """Descriptor columns contributed by each selected stage."""
    cells = POOL_SIDES[pool] ** 2
    return [stage_channels[level - 1] * cells for level in levels]


def pool_levels(features: Sequence[torch.Tensor], levels: Sequence[int], pool: str) -> torch.Tensor:
    """N x D descriptor from per-stage maps (``features[i]`` is stage ``i + 1``)."""
    side = POOL_SIDES[pool]
    return torch.cat([F.adaptive_avg_pool2d(features[level - 1], side).flatten(1)
                      for level in levels], 1)

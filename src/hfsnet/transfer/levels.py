"""The ``--levels`` and ``--pool`` flags: which stages a descriptor reads and how each is pooled
(the layout itself, :func:`hfsnet.models.head.pool_levels`, is the model head's)."""

from __future__ import annotations

from hfsnet.models.head import POOLS
from hfsnet.transfer.errors import CacheError


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
    if pool not in POOLS:
        raise CacheError(f"--pool: expected one of {', '.join(POOLS)}, got {pool!r}")
    return pool

"""Learning-rate schedules as pure functions of the step, so resuming needs no scheduler state."""

from __future__ import annotations

import math


def lr_factor(kind: str, step: int, total_steps: int, warmup_fraction: float = 0.0) -> float:
    """Multiplier of every group's base learning rate before optimizer step ``step`` (0-based).

    ``constant``: 1 after a linear warmup. ``cosine``: linear warmup, then cosine decay to 0.
    ``onecycle``: linear ramp from 0.1 to 1 over the warmup share, then linear decay to 0 — the
    triangle that trains small CIFAR nets fastest.
    """
    if total_steps < 1:
        raise ValueError("total_steps must be >= 1")
    warmup = int(warmup_fraction * total_steps)
    if kind == "onecycle":
        if step < warmup:
            return 0.1 + 0.9 * step / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    if kind == "cosine":
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    raise ValueError(f"unknown schedule {kind!r}")

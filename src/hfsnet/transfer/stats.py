"""Column statistics of cached descriptors, in float64 over chunks of rows."""

from __future__ import annotations

import numpy as np
import torch

CHUNK = 8192  # rows converted to float64 at a time: 8192 x 2400 columns is 157 MB


def safe_std(mean: torch.Tensor, mean_square: torch.Tensor) -> torch.Tensor:
    """Standard deviation from E[x] and E[x^2]; 1 for (numerically) constant columns such as dead
    units, which standardisation must leave alone instead of dividing by ~0."""
    std = (mean_square - mean**2).clamp(min=0).sqrt()
    constant = std <= 1e-8 + 1e-6 * mean.abs()
    return torch.where(constant, torch.ones_like(std), std)


def column_stats(features: np.ndarray, chunk: int = CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, standard deviation) of every column, float64."""
    total = torch.zeros(features.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, len(features), chunk):
        x = torch.from_numpy(np.asarray(features[start : start + chunk], dtype=np.float64))
        total += x.sum(0)
        squares += (x * x).sum(0)
    mean = total / len(features)
    return mean, safe_std(mean, squares / len(features))

"""What a ridge head reads instead of the raw descriptor: kept columns, a normalisation and random
ReLU features, built from the training rows as a fixed
:class:`~hfsnet.models.head.DescriptorTransform` saved with the head.

- ``normalize``: ``standardize`` z-scores every column inside the ridge fit (folded into the
  head's linear layer, no transform); ``center-l2`` (SimpleShot) subtracts the training mean and
  divides each row by its L2 norm, which is not linear, so the head carries it; ``none`` fits on
  the descriptors as they are (only centred, by the unpenalised intercept).
- ``select`` (Head2Toe): a first ridge fit on standardised descriptors ranks column groups (one
  column with gap/max pooling, a channel's four cells with 2x2) by the L2 norm of their weight
  rows divided by sqrt(group size); the best groups are kept up to exactly ``select`` columns
  (the last group cut if it does not fit) and the head reads only those.
- ``expand`` (RanPAC): a fixed Gaussian projection (seeded) to ``expand`` columns, then ReLU,
  on the kept and normalised descriptor (standardised first under ``standardize``: the ReLU's
  threshold needs centred inputs), optionally after the input columns themselves.

Columns are selected first, then normalised, then expanded.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from hfsnet.models.head import POOL_CELLS, DescriptorTransform
from hfsnet.transfer.errors import CacheError
from hfsnet.transfer.ridge import fit_ridge
from hfsnet.transfer.stats import Rows, column_stats

NORMALIZE = ("standardize", "center-l2", "none")


def group_scores(coef: torch.Tensor, group: int) -> torch.Tensor:
    """Relevance of each group of ``group`` consecutive columns: the Frobenius norm of its rows
    of ``coef`` (d x k, weights on standardised columns) over sqrt(group)."""
    return coef.reshape(-1, group * coef.shape[1]).norm(dim=1) / math.sqrt(group)


def keep_budget(scores: torch.Tensor, group: int, budget: int) -> torch.Tensor:
    """Ascending indices of exactly ``budget`` columns: whole groups, best first, the last one
    cut to fit."""
    order = torch.sort(scores, descending=True, stable=True).indices
    columns = (order[:, None] * group + torch.arange(group)).flatten()[:budget]
    return columns.sort().values


def select_columns(features: np.ndarray, labels: np.ndarray, num_classes: int, pool: str,
                   budget: int, **ridge: Any) -> torch.Tensor:
    """The ``budget`` columns a first ridge fit on standardised descriptors ranks best."""
    width = features.shape[1]
    if not 0 < budget < width:
        raise CacheError(f"--select: expected a number of columns in 1..{width - 1} (the "
                         f"descriptors are {width} wide), got {budget}")
    first = fit_ridge(features, labels, num_classes, standardize=True, **ridge)
    assert first.scale is not None
    coef = (first.weight * first.scale).T  # d x k, in standardised units
    return keep_budget(group_scores(coef, POOL_CELLS[pool]), POOL_CELLS[pool], budget)


def projection(width: int, expand: int, seed: int) -> torch.Tensor:
    """The fixed width x expand N(0, 1/width) matrix of random features, from ``seed``."""
    generator = torch.Generator().manual_seed(seed % 2**64)
    return torch.randn(width, expand, generator=generator) / math.sqrt(width)


def build_transform(features: np.ndarray, labels: np.ndarray, num_classes: int, pool: str, *,
                    normalize: str, select: int = 0, expand: int = 0,
                    expand_input: bool = False, seed: int = 0,
                    **ridge: Any) -> DescriptorTransform | None:
    """The transform these options ask for, its buffers set from the training rows; None when
    the head reads the descriptor as it is. ``seed`` draws the projection and the selection
    fit's held-out rows; ``ridge``: the other options of that fit."""
    if normalize not in NORMALIZE:
        raise CacheError(f"--normalize must be one of {NORMALIZE}, got {normalize!r}")
    shift = normalize == "center-l2" or (normalize == "standardize" and expand > 0)
    scale = normalize == "standardize" and expand > 0
    if not (select or shift or expand):
        return None
    transform = DescriptorTransform(features.shape[1], keep=select, shift=shift, scale=scale,
                                    l2=normalize == "center-l2", expand=expand,
                                    expand_input=expand_input)
    with torch.no_grad():
        if select:
            transform.columns.copy_(select_columns(features, labels, num_classes, pool, select,
                                                   seed=seed, **ridge))
        kept = select or features.shape[1]
        if shift or scale:
            mean, std = column_stats(Rows(features, _kept_only(transform)))
            if shift:
                transform.shift.copy_(mean)
            if scale:
                transform.scale.copy_(std)
        if expand:
            transform.projection.copy_(projection(kept, expand, seed))
    return transform


def _kept_only(transform: DescriptorTransform) -> Any:
    """The transform's column selection alone (identity without one)."""
    if not transform.settings["keep"]:
        return None
    columns = transform.columns
    return lambda x: x.index_select(1, columns)


def transform_rows(features: np.ndarray, transform: DescriptorTransform | None) -> Rows:
    """``features`` as the head's first linear layer reads them (in float64, chunk by chunk)."""
    return Rows(features, transform)


"""Stratified, seeded subsets: the validation carve-out and ``--limit-train``."""

from __future__ import annotations

import torch

from .errors import DataError
from .imageset import ImageSet


def stratified_pick(labels: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """Sorted indices of ``count`` items drawn at random within each class, every class getting
    its share of ``count`` in proportion to its size (largest remainder, ties to lower labels)."""
    classes, sizes = labels.unique(return_counts=True)
    picked = []
    for label, quota in zip(classes.tolist(), _quotas(sizes, count), strict=True):
        members = torch.nonzero(labels == label).flatten()
        picked.append(members[torch.randperm(len(members), generator=generator)[:quota]])
    return torch.cat(picked).sort().values


def carve_validation(data: ImageSet, fraction: float,
                     generator: torch.Generator) -> tuple[ImageSet, ImageSet]:
    """Split ``data`` into (train, val) with ``round(fraction * N)`` (at least one) val images."""
    count = max(1, round(fraction * len(data)))
    if count >= len(data):
        raise DataError(f"--val-split {fraction}: leaves no training images out of {len(data)}")
    val = stratified_pick(data.labels, count, generator)
    keep = torch.ones(len(data), dtype=torch.bool)
    keep[val] = False
    return data.subset(keep), data.subset(val)


def limit(data: ImageSet, count: int, generator: torch.Generator) -> ImageSet:
    """A stratified subset of ``count`` images; all of ``data`` if it has no more than that."""
    if count >= len(data):
        return data
    return data.subset(stratified_pick(data.labels, count, generator))


def _quotas(sizes: torch.Tensor, count: int) -> list[int]:
    exact = sizes.double() * count / sizes.sum()
    quotas = exact.floor().long()
    by_remainder = torch.argsort(exact - quotas, descending=True, stable=True)
    quotas[by_remainder[: count - int(quotas.sum())]] += 1
    return quotas.tolist()

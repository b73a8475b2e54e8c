"""Stratified, seeded subsets: the validation carve-out and ``--limit-train``."""

from __future__ import annotations

import torch

from .errors import DataError
from .imageset import ImageSet


def stratified_pick(labels: torch.Tensor, count: int, generator: torch.Generator,
                    spare: int = 0) -> torch.Tensor:
    """Sorted indices of ``count`` items drawn at random within each class, every class getting
    its share of ``count`` in proportion to its size (largest remainder, ties to lower labels).

    ``spare`` items of every class are never picked; a share that would take them goes to the
    other classes, again by largest remainder. Needs ``count`` <= N - ``spare`` * classes.
    """
    classes, sizes = labels.unique(return_counts=True)
    picked = []
    quotas = _quotas(sizes, count, (sizes - spare).clamp(min=0))
    for label, quota in zip(classes.tolist(), quotas, strict=True):
        members = torch.nonzero(labels == label).flatten()
        picked.append(members[torch.randperm(len(members), generator=generator)[:quota]])
    return torch.cat(picked).sort().values


def carve_validation(data: ImageSet, fraction: float,
                     generator: torch.Generator) -> tuple[ImageSet, ImageSet]:
    """Split ``data`` into (train, val) with ``round(fraction * N)`` (at least one) val images.

    Every class keeps at least one training image, so a class with a single image is never held
    out whole; a fraction too large for that is a DataError.
    """
    count = max(1, round(fraction * len(data)))
    if count >= len(data):
        raise DataError(f"--val-split {fraction}: leaves no training images out of {len(data)}")
    classes = len(data.labels.unique())
    if count > len(data) - classes:
        raise DataError(f"--val-split {fraction}: holding out {count} of {len(data)} images "
                        f"would leave one of the {classes} classes without training images; "
                        f"at most {len(data) - classes} can be held out (one image per class "
                        "stays in train)")
    val = stratified_pick(data.labels, count, generator, spare=1)
    keep = torch.ones(len(data), dtype=torch.bool)
    keep[val] = False
    return data.subset(keep), data.subset(val)


def limit(data: ImageSet, count: int, generator: torch.Generator) -> ImageSet:
    """A stratified subset of ``count`` images; all of ``data`` if it has no more than that."""
    if count >= len(data):
        return data
    return data.subset(stratified_pick(data.labels, count, generator))


def _quotas(sizes: torch.Tensor, count: int, caps: torch.Tensor) -> list[int]:
    """Largest-remainder shares of ``count`` in proportion to ``sizes``, none above its cap."""
    exact = sizes.double() * count / sizes.sum()
    quotas = torch.minimum(exact.floor().long(), caps)
    by_remainder = torch.argsort(exact - exact.floor(), descending=True, stable=True).tolist()
    missing = count - int(quotas.sum())
    while missing > 0:
        open_classes = [i for i in by_remainder if quotas[i] < caps[i]][:missing]
        if not open_classes:
            raise ValueError(f"cannot pick {count} items within the caps {caps.tolist()}")
        quotas[open_classes] += 1
        missing -= len(open_classes)
    return quotas.tolist()

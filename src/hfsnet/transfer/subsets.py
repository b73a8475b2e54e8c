"""Class subsets and per-class samples of a dataset, for transfer experiments."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from hfsnet.data import DataError, DataSplits, ImageSet
from hfsnet.data.stats import channel_stats


def _derived_digest(digest: str, how: str) -> str:
    return hashlib.sha256(f"{digest}|{how}".encode()).hexdigest()


def parse_classes(text: str) -> list[str]:
    """``--classes a,b,c`` as a list of names: no empty names, no repeats."""
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise DataError(f"--classes: expected comma-separated class names, got {text!r}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise DataError(f"--classes: {repeated} named more than once in {text!r}")
    return names


def keep_classes(images: ImageSet, classes: Sequence[str]) -> ImageSet:
    """The images of ``classes`` only, relabelled 0..k-1 in the order ``classes`` are given."""
    missing = [name for name in classes if name not in images.classes]
    if missing:
        raise DataError(f"--classes: {missing} are not in the dataset (it has "
                        f"{images.classes})")
    old = torch.tensor([images.classes.index(name) for name in classes])
    remap = torch.full((len(images.classes),), -1, dtype=torch.int64)
    remap[old] = torch.arange(len(classes))
    new = remap[images.labels]
    index = torch.nonzero(new >= 0).flatten()
    return ImageSet(images.images[index], new[index], list(classes))


def select_classes(data: DataSplits, classes: Sequence[str]) -> DataSplits:
    """``data`` restricted to ``classes`` in every split, with statistics of the new train set."""
    train = keep_classes(data.train, classes)
    mean, std = channel_stats(train.images)
    val = keep_classes(data.val, classes) if data.val is not None else None
    return DataSplits(f"{data.name}[{','.join(classes)}]", train,
                      keep_classes(data.test, classes), val, mean, std,
                      _derived_digest(data.digest, f"classes={','.join(classes)}"))


def sample_per_class(images: ImageSet, count: int, seed: int) -> ImageSet:
    """``count`` images of every class drawn without replacement by ``seed``, in index order."""
    generator = torch.Generator().manual_seed(seed)
    picked = []
    for label in range(len(images.classes)):
        members = torch.nonzero(images.labels == label).flatten()
        if len(members) < count:
            raise DataError(f"--per-class {count}: class {images.classes[label]!r} has only "
                            f"{len(members)} training images")
        picked.append(members[torch.randperm(len(members), generator=generator)[:count]])
    return images.subset(torch.cat(picked).sort().values)


def few_shot(data: DataSplits, count: int, seed: int) -> DataSplits:
    """``data`` with ``count`` training images per class (the test split untouched), its
    mean/std recomputed from the kept images: call it before ``for_trunk``, which then puts
    the trunk's own normalisation back."""
    train = sample_per_class(data.train, count, seed)
    mean, std = channel_stats(train.images)
    return DataSplits(data.name, train, data.test, data.val, mean, std,
                      _derived_digest(data.digest, f"per_class={count},seed={seed}"))

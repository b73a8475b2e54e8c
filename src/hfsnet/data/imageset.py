"""In-memory containers for decoded image splits."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import DataError


@dataclass
class ImageSet:
    """One split, fully in memory.

    ``images`` is uint8 N x C x H x W (contiguous), ``labels`` int64 of length N, and ``classes``
    maps a label to its class name.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 N x C x H x W, got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(f"labels must be int64 of length {len(self.images)}, got "
                             f"{self.labels.dtype} {tuple(self.labels.shape)}")
        self.images = self.images.contiguous()

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> ImageSet:
        """The images at ``index`` (an index or boolean mask tensor), in that order."""
        return ImageSet(self.images[index], self.labels[index], self.classes)


@dataclass
class Decoded:
    """What a dataset reader produces before splitting: train and test, plus skipped files.

    ``bad`` holds one ``"path: reason"`` line per file that could not be decoded and was left out;
    whether that is an error is decided by the caller (``skip_bad``), so that a cached decode can be
    judged again on every load.
    """

    train: ImageSet
    test: ImageSet
    bad: list[str] = field(default_factory=list)


@dataclass
class DataSplits:
    """A dataset ready for training: splits, normalisation statistics and a source digest.

    ``mean`` and ``std`` are per channel, of the final train images scaled to [0, 1]. ``digest``
    is a hex content digest of the source files (not of the split options), stable across runs.
    """

    name: str
    train: ImageSet
    test: ImageSet
    val: ImageSet | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    digest: str

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)

    @property
    def in_channels(self) -> int:
        return self.train.images.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) in pixels."""
        height, width = self.train.images.shape[-2:]
        return height, width


def check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
    """Raise DataError naming ``where`` if a label is outside 0 .. num_classes - 1."""
    outside = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(outside):
        raise DataError(f"{where}: label {labels[outside[0]]} at index {outside[0]} is out of "
                        f"range for {num_classes} classes")


def replicate_channels(images: ImageSet, channels: int) -> ImageSet:
    """Grayscale ``images`` with their one channel copied ``channels`` times."""
    return ImageSet(images.images.expand(-1, channels, -1, -1), images.labels, images.classes)


def to_rgb(data: DataSplits) -> DataSplits:
    """``data`` with grayscale images replicated to 3 channels in every split (an RGB trunk
    then sees gray as equal R, G and B), statistics replicated alike."""
    if data.in_channels != 1:
        return data
    val = replicate_channels(data.val, 3) if data.val is not None else None
    return dataclasses.replace(data, train=replicate_channels(data.train, 3),
                               test=replicate_channels(data.test, 3), val=val,
                               mean=data.mean * 3, std=data.std * 3)

"""A trained trunk to transfer from, and target data prepared the way that trunk expects."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hfsnet.data import DataError, DataSplits, load_dataset
from hfsnet.models import FeatureClassifier
from hfsnet.train.checkpoint import Checkpoint, load_checkpoint


@dataclass
class Source:
    """A loaded checkpoint and the model rebuilt from it."""

    checkpoint: Checkpoint
    model: FeatureClassifier

    @property
    def meta(self) -> dict[str, Any]:
        return self.checkpoint.meta

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(self.meta["mean"])

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self.meta["std"])

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.meta.get("config") or {})


def load_source(path: str | Path) -> Source:
    """The checkpoint at ``path`` (file or run directory) and its model."""
    checkpoint = load_checkpoint(path)
    return Source(checkpoint, checkpoint.build_model())


def check_compatible(source: Source, data: DataSplits) -> None:
    """The trunk can read ``data``'s images: same channels and size as it was trained on."""
    wanted = (source.meta["in_channels"], *source.meta["image_size"])
    found = (data.in_channels, *data.image_size)
    if found != wanted:
        raise DataError(
            f"--data: images are {'x'.join(map(str, found))} (CxHxW), the checkpoint "
            f"{source.checkpoint.path} expects {'x'.join(map(str, wanted))}; resize the dataset "
            f"to match")


def for_trunk(source: Source, data: DataSplits) -> DataSplits:
    """``data`` checked against the trunk and normalised with the trunk's own statistics (the
    ones it was trained with), not the new data's."""
    check_compatible(source, data)
    return dataclasses.replace(data, mean=source.mean, std=source.std)


def load_target(source: Source, spec: str, *, val_split: float = 0.0,
                limit_train: int | None = None, seed: int = 0) -> DataSplits:
    """Load ``spec`` resized as the trunk's training data was, ready for :func:`for_trunk`."""
    data = load_dataset(spec, val_split=val_split, limit_train=limit_train, seed=seed,
                        image_size=source.config.get("image_size"))
    return for_trunk(source, data)

"""A trunk to transfer from, and target data prepared the way that trunk expects.

The trunk is a trained checkpoint (:func:`load_source`) or a registry model built with its own
pretrained weights (:meth:`Source.pretrained`), whose normalisation is the model's
``preprocessing`` and which resizes its inputs itself, so it reads images of any size.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hfsnet.data import DataError, DataSplits, load_dataset
from hfsnet.models import FeatureClassifier
from hfsnet.models.errors import ModelError
from hfsnet.train.checkpoint import Checkpoint, load_checkpoint


@dataclass
class Source:
    """A trunk: its model and the metadata of the data it expects (``mean``, ``std``,
    ``classes``, ``config``; ``in_channels`` and, for a fixed input size, ``image_size``).

    ``checkpoint``: the file it was loaded from; None for a registry model's pretrained weights.
    ``origin``: how records and messages name it.
    """

    model: FeatureClassifier
    meta: dict[str, Any]
    checkpoint: Checkpoint | None = None
    origin: str = ""

    @classmethod
    def pretrained(cls, model: FeatureClassifier) -> Source:
        """``model`` as built by the registry with its pretrained weights: normalised by its
        ``preprocessing`` mean and std, no class list of its own, any input size."""
        preprocessing = getattr(model, "preprocessing", None)
        if not isinstance(preprocessing, dict):
            raise ModelError(f"--model {model.model_name}: not a pretrained trunk (it declares "
                             "no preprocessing); train it with `hfsnet train`, or pass a "
                             "pretrained model such as efficientnet-lite0")
        meta = {"mean": list(preprocessing["mean"]), "std": list(preprocessing["std"]),
                "in_channels": len(preprocessing["mean"]), "classes": [], "config": {}}
        return cls(model, meta, None, f"{model.model_name} (pretrained weights)")

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

    @property
    def in_channels(self) -> int:
        return int(self.meta["in_channels"])

    @property
    def default_cache(self) -> Path | None:
        """feature-cache/ beside the checkpoint; None for a source without one."""
        if self.checkpoint is None:
            return None
        return self.checkpoint.path.parent / "feature-cache"


def load_source(path: str | Path) -> Source:
    """The checkpoint at ``path`` (file or run directory) and its model."""
    checkpoint = load_checkpoint(path)
    return Source(checkpoint.build_model(), checkpoint.meta, checkpoint, str(checkpoint.path))


def check_compatible(source: Source, data: DataSplits) -> None:
    """The trunk can read ``data``'s images: the channels it expects, and the size it was
    trained on when it has one."""
    size = source.meta.get("image_size")
    wanted = (source.in_channels, *size) if size else (source.in_channels,)
    found = (data.in_channels, *data.image_size) if size else (data.in_channels,)
    if found != wanted:
        what = "CxHxW" if size else "channels"
        raise DataError(
            f"--data: images are {'x'.join(map(str, found))} ({what}), the trunk "
            f"{source.origin} expects {'x'.join(map(str, wanted))}; resize the dataset to match")


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

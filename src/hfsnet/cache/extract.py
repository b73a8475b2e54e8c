"""Running a frozen trunk once over a dataset's train and test images to fill a feature cache."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hfsnet.cache.errors import CacheError
from hfsnet.cache.head import trunk_spec
from hfsnet.cache.levels import level_widths, pool_levels
from hfsnet.cache.store import (
    MANIFEST,
    SPLITS,
    CacheKey,
    FeatureCache,
    build_cache,
    check_key,
    open_cache,
)
from hfsnet.data import BatchLoader, DataSplits, ImageSet
from hfsnet.models import FeatureClassifier
from hfsnet.train.runtime import autocast

FEATURE_DTYPE = "float16"  # halves the cache; descriptors are pooled activations of size ~1


@dataclass
class CacheSpec:
    """How to describe each image: the stages, their pooling and the trunk's preprocessing."""

    levels: list[int]
    pool: str
    mean: tuple[float, ...]  # the trunk's normalisation, per channel
    std: tuple[float, ...]
    precision: str = "fp32"
    batch_size: int = 500
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


@dataclass
class CacheResult:
    cache: FeatureCache
    built: bool  # False: an existing cache was reused
    seconds: float  # to find or build it


def weights_digest(model: FeatureClassifier) -> str:
    """sha256 over the trunk's parameters and buffers (everything outside ``.head``)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if name.startswith("head."):
            continue
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def data_digest(data: DataSplits) -> str:
    """sha256 over the class names and the pixels and labels of the train and test splits."""
    digest = hashlib.sha256(json.dumps(data.classes).encode())
    for split in SPLITS:
        images: ImageSet = getattr(data, split)
        digest.update(images.images.contiguous().numpy().data)
        digest.update(images.labels.contiguous().numpy().data)
    return digest.hexdigest()


def cache_key(model: FeatureClassifier, data: DataSplits, spec: CacheSpec) -> CacheKey:
    name, options = trunk_spec(model)
    preprocessing = {"mean": list(spec.mean), "std": list(spec.std),
                     "image_size": list(data.image_size), "in_channels": data.in_channels,
                     "precision": spec.precision, "mode": "eval, no augmentation"}
    return CacheKey(trunk={"model": name, "options": options, "weights": weights_digest(model)},
                    data=data_digest(data), preprocessing=preprocessing,
                    levels=list(spec.levels), pool=spec.pool)


@torch.inference_mode()
def extract(model: FeatureClassifier, images: ImageSet, features: np.ndarray,
            labels: np.ndarray, spec: CacheSpec) -> None:
    """Write the descriptor and label of every image of ``images``, in order."""
    loader = BatchLoader(images, spec.batch_size, mean=spec.mean, std=spec.std,
                         device=spec.device, channels_last=True)
    row = 0
    for x, y in loader.epoch(0):
        with autocast(spec.device, spec.precision):
            pooled = pool_levels(model.forward_features(x), spec.levels, spec.pool)
        half = pooled.float().cpu().numpy().astype(np.float16)
        if not np.isfinite(half).all():
            raise CacheError("trunk features overflow float16 (|x| > 65504); this trunk's "
                             "activations cannot be cached")
        features[row : row + len(half)] = half
        labels[row : row + len(half)] = y.cpu().numpy()
        row += len(half)


def _filler(model: FeatureClassifier, data: DataSplits,
            spec: CacheSpec) -> Callable[[Callable[..., np.ndarray]], dict[str, Any]]:
    widths = level_widths(model.stage_channels(), spec.levels, spec.pool)

    def fill(allocate: Callable[..., np.ndarray]) -> dict[str, Any]:
        start = time.perf_counter()
        was_training = model.training
        model.eval()
        model.to(spec.device, memory_format=torch.channels_last)
        try:
            for split in SPLITS:
                images: ImageSet = getattr(data, split)
                extract(model, images,
                        allocate(f"{split}_features", (len(images), sum(widths)), FEATURE_DTYPE),
                        allocate(f"{split}_labels", (len(images),), "int64"), spec)
        finally:
            model.train(was_training)
        names = model.stage_names()
        return {"classes": data.classes, "data_name": data.name,
                "level_names": [names[level - 1] for level in spec.levels],
                "level_channels": [model.stage_channels()[level - 1] for level in spec.levels],
                "level_widths": widths, "width": sum(widths),
                "build_seconds": time.perf_counter() - start}

    return fill


def check_trunk_fits(path: Path, manifest: dict[str, Any], model: FeatureClassifier) -> None:
    """The cache's levels exist in ``model``'s trunk with the same channels."""
    channels = model.stage_channels()
    levels = manifest["key"]["levels"]
    fits = levels[-1] <= len(channels) and [channels[i - 1] for i in levels] == manifest[
        "level_channels"]
    if not fits:
        raise CacheError(
            f"{path}: the checkpoint's trunk does not fit this cache: the cache holds stages "
            f"{levels} with {manifest['level_channels']} channels, the trunk has "
            f"{len(channels)} stages with {channels} channels")


def read_layout(path: Path, model: FeatureClassifier) -> tuple[list[int], str]:
    """(levels, pool) of the existing cache at ``path``, checked against ``model``'s trunk."""
    cache = open_cache(path)
    check_trunk_fits(path, cache.manifest, model)
    return list(cache.key["levels"]), cache.key["pool"]


def get_cache(path: Path, model: FeatureClassifier, data: DataSplits, spec: CacheSpec, *,
              rebuild: bool = False) -> CacheResult:
    """The cache of ``model``'s trunk over ``data``: reused when one exists for the same key,
    otherwise (or with ``rebuild``) built.

    ``path`` is a cache root (the cache goes to ``path/<key digest>``) or an existing cache
    directory, which must then match the request unless ``rebuild`` builds beside it. A build
    moves ``model`` to ``spec.device`` in channels-last memory format (faster convolutions).
    """
    start = time.perf_counter()
    key = cache_key(model, data, spec)
    concrete = (path / MANIFEST).is_file()
    root = path.parent if concrete else path
    existing = path if concrete else root / key.digest()
    if not rebuild and existing.exists():
        try:
            cache = open_cache(existing)
            if concrete:
                check_trunk_fits(path, cache.manifest, model)
            check_key(cache, key)
        except CacheError as err:
            raise CacheError(f"{err}; pass --rebuild to build a new cache") from None
        return CacheResult(cache, False, time.perf_counter() - start)
    cache = build_cache(root, key, _filler(model, data, spec))
    return CacheResult(cache, True, time.perf_counter() - start)

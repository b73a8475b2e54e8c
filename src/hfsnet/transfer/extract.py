"""Running a frozen trunk once over a dataset's train and test images to fill a feature cache."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib.format import open_memmap

from hfsnet.data import BatchLoader, DataSplits, ImageSet
from hfsnet.data.augment import view_count, view_transforms
from hfsnet.fsutil import tensor_digest
from hfsnet.models import FeatureClassifier
from hfsnet.models.head import level_widths, pool_levels
from hfsnet.models.level_head import trunk_spec
from hfsnet.train.distributed import DistContext, init_distributed
from hfsnet.train.progress import Progress
from hfsnet.transfer.errors import CacheError
from hfsnet.transfer.frozen import FrozenTrunk
from hfsnet.transfer.store import (
    MANIFEST,
    SPLITS,
    CacheKey,
    FeatureCache,
    build_cache,
    check_key,
    open_cache,
)

FEATURE_DTYPE = "float16"  # halves the cache; descriptors are pooled activations of size ~1
# ``CacheSpec.batch_size`` counts images of up to BATCH_SIDE px; larger inputs go in
# proportionally fewer per batch (the same pixels, so about the same memory). At 500 images a
# batch, EuroSAT-sized 64 px inputs ran EfficientNet-Lite0's pass at 720 img/s, but 128 px at
# 100 and 224 px at 25, against 234 at 128 images and 86 at 40: a 224 px batch of 500 holds
# 2.4 GB maps, past what hfsnet.train.allocator keeps for reuse, so each is faulted in anew
# (quiet AVX2 EPYC, fp32, `benchmarks/cache_batch.py --sizes 64,128,224 --batches
# 16,40,64,128,500 --images 500`, results/cache_batch-allocator-epyc-avx2.json).
BATCH_SIDE = 64


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
    progress: bool = False  # a progress line on stderr per split (not part of the cache key)
    train_views: str = "none"  # fixed copies of every training image (VIEW_TRANSFORMS)


@dataclass
class CacheResult:
    cache: FeatureCache
    built: bool  # False: an existing cache was reused
    seconds: float  # to find or build it


def weights_digest(model: FeatureClassifier) -> str:
    """sha256 over the trunk's parameters and buffers (everything outside ``.head``)."""
    return tensor_digest({name: tensor for name, tensor in model.state_dict().items()
                          if not name.startswith("head.")})


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
    if spec.train_views != "none":  # absent otherwise, so caches built before it keep their key
        preprocessing["train_views"] = spec.train_views
    return CacheKey(trunk={"model": name, "options": options, "weights": weights_digest(model)},
                    data=data_digest(data), preprocessing=preprocessing,
                    levels=list(spec.levels), pool=spec.pool)


def trunk_side(model: FeatureClassifier, images: ImageSet) -> tuple[int, int]:
    """(height, width) the trunk computes at: the side it resizes every input to (a pretrained
    trunk's ``preprocessing["image_size"]``), else the images' own."""
    side = (getattr(model, "preprocessing", None) or {}).get("image_size")
    if isinstance(side, int):
        return side, side
    height, width = images.images.shape[-2:]
    return int(height), int(width)


def images_per_batch(batch_size: int, side: tuple[int, int]) -> int:
    """``batch_size`` images of up to BATCH_SIDE px, proportionally fewer larger ones (at least
    one)."""
    pixels = side[0] * side[1]
    return max(1, min(batch_size, batch_size * BATCH_SIDE**2 // pixels))


def batch_for(model: FeatureClassifier, images: ImageSet, spec: CacheSpec) -> int:
    """Images per trunk batch: ``spec.batch_size`` scaled to the side the trunk computes at."""
    return images_per_batch(spec.batch_size, trunk_side(model, images))


@torch.inference_mode()
def extract(model: FeatureClassifier, images: ImageSet, features: np.ndarray,
            labels: np.ndarray, spec: CacheSpec, label: str = "features",
            views: str = "none", trunk: FrozenTrunk | None = None) -> None:
    """Write the descriptor and label of every image of ``images``, in order; with ``views``
    (``VIEW_TRANSFORMS``) every image under each transform, view-major: row ``v * n + i`` is
    image ``i`` under transform ``v``, so rows ``i, n + i, ...`` are one image.

    The trunk runs as ``trunk``, a :class:`FrozenTrunk` of ``model`` (by default one made for
    this split: a copy with its batch norms folded, channels-last, in ``spec.precision``,
    compiled when the split is large enough to repay the compile time). The views are made
    batch by batch, so the images are never held more than once.
    """
    transforms = view_transforms(views, tuple(images.images.shape[-2:]))
    loader = BatchLoader(images, batch_for(model, images, spec), mean=spec.mean, std=spec.std,
                         device=spec.device, channels_last=True)
    n = len(images)
    if trunk is None:
        trunk = frozen_trunk(model, spec, n * len(transforms), images)
    progress = Progress(len(loader) * len(transforms), label, enabled=spec.progress)
    start, step, written = 0, 0, 0
    for x, y in loader.epoch(0):
        y_host = y.cpu().numpy()
        for v, transform in enumerate(transforms):
            view = transform(x).contiguous(memory_format=torch.channels_last)
            pooled = pool_levels(trunk(view), spec.levels, spec.pool)
            half = pooled.float().cpu().numpy().astype(np.float16)
            if not np.isfinite(half).all():
                raise CacheError("trunk features overflow float16 (|x| > 65504); this trunk's "
                                 "activations cannot be cached")
            rows = slice(v * n + start, v * n + start + len(half))
            features[rows] = half
            labels[rows] = y_host
            step, written = step + 1, written + len(half)
            progress.update(step, written)
        start += len(y)
    progress.close()


def frozen_trunk(model: FeatureClassifier, spec: CacheSpec, n_images: int,
                 images: ImageSet) -> FrozenTrunk:
    """The folded copy of ``model`` that computes ``n_images`` descriptors of images like
    ``images`` (compiled when they repay the compile time), in batches of ``batch_for``."""
    return FrozenTrunk(model, precision=spec.precision, compile="auto", n_images=n_images,
                       device=spec.device, batch_size=batch_for(model, images, spec))


def _shard(n: int, ctx: DistContext) -> slice:
    """This rank's contiguous share of ``n`` rows (near-equal shares, in rank order)."""
    bounds = np.linspace(0, n, ctx.world_size + 1).round().astype(int)
    return slice(int(bounds[ctx.rank]), int(bounds[ctx.rank + 1]))


def _extract_splits(model: FeatureClassifier, data: DataSplits, spec: CacheSpec,
                    allocate: Callable[..., np.ndarray], ctx: DistContext) -> None:
    """Descriptors of this rank's share of every split into arrays from ``allocate``."""
    widths = level_widths(model.stage_channels(), spec.levels, spec.pool)
    was_training = model.training
    model.eval()
    model.to(spec.device, memory_format=torch.channels_last)
    try:
        splits: dict[str, ImageSet] = {split: getattr(data, split) for split in SPLITS}
        mine = {split: images.subset(torch.arange(len(images))[_shard(len(images), ctx)])
                for split, images in splits.items()}
        views = {split: spec.train_views if split == "train" else "none" for split in SPLITS}
        rows = {split: len(mine[split]) * view_count(views[split]) for split in SPLITS}
        # One folded copy serves every split: folding, its check and the first batch's
        # one-off costs are paid once per build, not once per split.
        trunk = frozen_trunk(model, spec, sum(rows.values()), mine["train"])
        for split in SPLITS:
            extract(model, mine[split],
                    allocate(f"{split}_features", (rows[split], sum(widths)), FEATURE_DTYPE),
                    allocate(f"{split}_labels", (rows[split],), "int64"), spec,
                    label=f"feature pass, {split}", views=views[split], trunk=trunk)
    finally:
        model.train(was_training)


def _shard_allocator(folder: Path, rank: int) -> Callable[..., np.ndarray]:
    def allocate(name: str, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        return open_memmap(folder / f"{name}.rank{rank}.npy", mode="w+", dtype=dtype,
                           shape=shape)

    return allocate


def _read_shards(folder: Path, name: str, world_size: int, views: int) -> np.ndarray:
    """Array ``name`` of the whole split: every rank's shard of its images, in rank order,
    within each of its ``views`` (each shard is view-major over its own images)."""
    shards = [np.load(folder / f"{name}.rank{r}.npy", mmap_mode="r") for r in range(world_size)]
    whole = np.concatenate([s.reshape(views, -1, *s.shape[1:]) for s in shards], axis=1)
    return whole.reshape(-1, *whole.shape[2:])


Filler = Callable[[Callable[..., np.ndarray]], dict[str, Any]]


def _filler(model: FeatureClassifier, data: DataSplits, spec: CacheSpec,
            shards: Path | None = None, ctx: DistContext | None = None) -> Filler:
    """Fills a new cache; with ``shards`` (under torchrun) from the ranks' shard files."""
    widths = level_widths(model.stage_channels(), spec.levels, spec.pool)

    def fill(allocate: Callable[..., np.ndarray]) -> dict[str, Any]:
        start = time.perf_counter()
        if shards is None or ctx is None:
            _extract_splits(model, data, spec, allocate, DistContext())
        else:
            for split in SPLITS:
                views = view_count(spec.train_views) if split == "train" else 1
                for name in (f"{split}_features", f"{split}_labels"):
                    whole = _read_shards(shards, name, ctx.world_size, views)
                    allocate(name, whole.shape, str(whole.dtype))[:] = whole
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
    ctx = init_distributed(spec.device.type)
    if not ctx.enabled:
        return CacheResult(build_cache(root, key, _filler(model, data, spec)), True,
                           time.perf_counter() - start)
    return CacheResult(_build_sharded(root, key, model, data, spec, ctx), True,
                       time.perf_counter() - start)


def _build_sharded(root: Path, key: CacheKey, model: FeatureClassifier, data: DataSplits,
                   spec: CacheSpec, ctx: DistContext) -> FeatureCache:
    """Under torchrun: every rank extracts its share of the images into shard files, rank 0
    merges them into the cache (written and renamed as in a single-process build), and every
    rank then opens the finished cache."""
    shards = root / f".{key.digest()}.shards"
    if ctx.is_main:
        shards.mkdir(parents=True, exist_ok=True)
    ctx.barrier()
    _extract_splits(model, data, spec, _shard_allocator(shards, ctx.rank), ctx)
    ctx.barrier()
    try:
        if ctx.is_main:
            build_cache(root, key, _filler(model, data, spec, shards, ctx))
    finally:
        if ctx.is_main:
            shutil.rmtree(shards, ignore_errors=True)
        ctx.barrier()
    return open_cache(root / key.digest())

"""``fit-head``: fit a new head on a trunk's feature cache and save trunk + head as a checkpoint."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hfsnet.data import DataSplits
from hfsnet.models import FeatureClassifier
from hfsnet.models.base import count_params
from hfsnet.train.checkpoint import CHECKPOINT_NAME, data_meta, save_checkpoint
from hfsnet.train.evaluate import EvalResult, summarize
from hfsnet.train.runtime import resolve_device
from hfsnet.transfer.errors import CacheError
from hfsnet.transfer.extract import CacheResult, CacheSpec, get_cache, read_layout
from hfsnet.transfer.head import LevelHead, install_head
from hfsnet.transfer.levels import check_pool, parse_levels
from hfsnet.transfer.ridge import ALPHAS, fit_ridge
from hfsnet.transfer.sgd import SgdOptions, fit_sgd
from hfsnet.transfer.source import Source, for_trunk
from hfsnet.transfer.stats import CHUNK
from hfsnet.transfer.store import MANIFEST, FeatureCache

METHODS = ("ridge", "sgd")


@dataclass
class HeadOptions:
    """How to fit the head; ``levels``/``pool`` None: those of a given cache, else all and gap."""

    method: str = "ridge"
    levels: str | None = None
    pool: str | None = None
    hidden: int = 0  # sgd only: width of a hidden ReLU layer; 0 is a linear head
    alphas: Sequence[float] = ALPHAS
    holdout: float = 0.1
    seed: int = 0
    sgd: SgdOptions = field(default_factory=SgdOptions)
    precision: str = "fp32"  # of the trunk pass that fills the cache
    batch_size: int = 500  # images per trunk pass batch
    device: str = "auto"
    rebuild: bool = False

    def validate(self) -> None:
        if self.method not in METHODS:
            raise CacheError(f"--method must be one of {METHODS}, got {self.method!r}")
        if self.hidden < 0:
            raise CacheError(f"--hidden must be >= 0, got {self.hidden}")
        if self.hidden and self.method != "sgd":
            raise CacheError("--hidden: a hidden layer needs --method sgd (ridge is linear)")


@dataclass
class HeadFit:
    """What fitting the head produced and cost."""

    method: str
    levels: list[int]
    pool: str
    width: int
    test_acc: float
    test_loss: float
    fit_seconds: float
    cache_path: str
    cache_built: bool
    cache_seconds: float
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_layout(cache_path: Path, model: FeatureClassifier,
                   options: HeadOptions) -> tuple[list[int], str]:
    """Levels and pooling: from the flags, else from an existing cache at ``cache_path``."""
    if (cache_path / MANIFEST).is_file() and options.levels is None and options.pool is None:
        return read_layout(cache_path, model)
    levels = parse_levels(options.levels or "all", len(model.stage_channels()))
    return levels, check_pool(options.pool or "gap")


def cache_for(model: FeatureClassifier, data: DataSplits, cache_path: Path,
              options: HeadOptions) -> CacheResult:
    """The cache (found or built) of ``model``'s trunk over ``data`` for these options."""
    levels, pool = resolve_layout(cache_path, model, options)
    spec = CacheSpec(levels, pool, data.mean, data.std, precision=options.precision,
                     batch_size=options.batch_size, device=resolve_device(options.device))
    return get_cache(cache_path, model, data, spec, rebuild=options.rebuild)


@torch.no_grad()
def score_descriptors(head: LevelHead, features: np.ndarray, labels: np.ndarray,
                      num_classes: int) -> EvalResult:
    """Loss and accuracy of ``head`` on cached descriptors."""
    head.eval()
    logits = [head.forward_descriptor(torch.from_numpy(np.asarray(features[i : i + CHUNK],
                                                                  dtype=np.float32)))
              for i in range(0, len(features), CHUNK)]
    return summarize(torch.cat(logits), torch.from_numpy(np.asarray(labels)), num_classes)


def fit_cached_head(cache: FeatureCache, stage_channels: Sequence[int],
                    options: HeadOptions) -> tuple[LevelHead, dict[str, Any]]:
    """A new head fitted on the cache's training rows, reading raw descriptors."""
    options.validate()
    levels, pool = cache.key["levels"], cache.key["pool"]
    k = len(cache.classes)
    head = LevelHead(stage_channels, levels, pool, k, options.hidden)
    if head.first_linear.in_features != cache.width:
        raise CacheError(f"{cache.path}: descriptors are {cache.width} wide, a head over "
                         f"stages {levels} ({pool}) of this trunk reads "
                         f"{head.first_linear.in_features}")
    features, labels = cache.features("train"), cache.labels("train")
    if options.method == "ridge":
        fit = fit_ridge(features, labels, k, alphas=options.alphas, holdout=options.holdout,
                        seed=options.seed)
        with torch.no_grad():
            head.classifier.weight.copy_(fit.temperature * fit.weight)
            head.classifier.bias.copy_(fit.temperature * fit.bias)
        details: dict[str, Any] = {"alpha": fit.alpha, "lambda": fit.lam,
                                   "temperature": fit.temperature,
                                   "holdout_acc": {str(a): v for a, v in
                                                   fit.holdout_acc.items()}}
    else:
        sgd = fit_sgd(head, features, labels, options.sgd)
        details = {"hidden": options.hidden, "epochs": options.sgd.epochs,
                   "epoch_seconds": sgd.epoch_seconds, "train_loss": sgd.train_loss,
                   "train_acc": sgd.train_acc}
    return head, details


def fit_head(source: Source, data: DataSplits, out_dir: Path, cache_path: Path,
             options: HeadOptions) -> HeadFit:
    """Fit a head for ``data`` (prepared by :func:`hfsnet.transfer.source.for_trunk`) on the cache
    of ``source``'s trunk; save trunk + head to ``out_dir`` as a complete checkpoint."""
    options.validate()
    data = for_trunk(source, data)
    model = source.model
    found = cache_for(model, data, cache_path, options)
    start = time.perf_counter()
    head, details = fit_cached_head(found.cache, model.stage_channels(), options)
    fit_seconds = time.perf_counter() - start
    test = score_descriptors(head, found.cache.features("test"), found.cache.labels("test"),
                             data.num_classes)
    install_head(model, head)
    result = HeadFit(options.method, head.levels, head.pool, found.cache.width, test.acc,
                     test.loss, fit_seconds, str(found.cache.path), found.built, found.seconds,
                     details)
    save_head_run(out_dir, source, data, model, result)
    return result


def save_head_run(out_dir: Path, source: Source, data: DataSplits, model: FeatureClassifier,
                  result: HeadFit) -> None:
    """checkpoint.safetensors (trunk + new head) and result.json in ``out_dir``."""
    meta = {**data_meta(data), "config": source.config, "epoch": 0, "history": [],
            "head_fit": {**result.to_dict(), "source": str(source.checkpoint.path)}}
    out_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out_dir / CHECKPOINT_NAME, model, meta)
    payload = {**result.to_dict(), "params": count_params(model), "out_dir": str(out_dir)}
    (out_dir / "result.json").write_text(json.dumps(payload, indent=2))

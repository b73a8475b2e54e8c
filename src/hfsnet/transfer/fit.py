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
from hfsnet.data.augment import VIEW_TRANSFORMS
from hfsnet.fsutil import atomic_write_files
from hfsnet.models import FeatureClassifier
from hfsnet.models.base import count_params
from hfsnet.models.head import POOLS, LevelHead
from hfsnet.models.level_head import install_head, trunk_spec
from hfsnet.train.checkpoint import CHECKPOINT_NAME, checkpoint_bytes, data_meta
from hfsnet.train.config import CONCRETE_PRECISIONS, TrainConfig
from hfsnet.train.evaluate import EvalResult, summarize
from hfsnet.train.options import OPEN_FRACTION, at_least, option, option_like, validate_fields
from hfsnet.train.runtime import resolve_device
from hfsnet.transfer.descriptors import NORMALIZE, build_transform, transform_rows
from hfsnet.transfer.errors import CacheError
from hfsnet.transfer.extract import (
    CacheResult,
    CacheSpec,
    get_cache,
    read_layout,
    weights_digest,
)
from hfsnet.transfer.levels import check_pool, parse_levels
from hfsnet.transfer.ridge import ALPHA_SELECTS, ALPHAS, RidgeFit, fit_ridge
from hfsnet.transfer.sgd import SgdOptions, fit_sgd
from hfsnet.transfer.source import Source, for_trunk
from hfsnet.transfer.stats import CHUNK, STATS_NAME, Moments, RidgeState, state_bytes
from hfsnet.transfer.store import MANIFEST, FeatureCache

METHODS = ("ridge", "sgd")


@dataclass
class HeadOptions:
    """How to fit the head; ``levels``/``pool`` None: those of a given cache, else all and gap."""

    method: str = option("ridge", choices=METHODS)
    levels: str | None = option(None, help="stages the descriptor reads: all (default), last, or "
                                "1,2,...")
    pool: str | None = option(None, choices=POOLS, help="per-stage pooling: gap (default) or 2x2")
    hidden: int = option(0, check=at_least(0), help="sgd: hidden ReLU layer width (0: none)")
    alphas: Sequence[float] = ALPHAS
    holdout: float = option(0.1, check=OPEN_FRACTION,
                            help="ridge: share of training rows held out to choose the strength")
    seed: int = option_like(TrainConfig, "seed", 0)
    # Defaults measured by benchmarks/descriptor_options.py (results/descriptor_options.json):
    # EfficientNet-Lite0 (ImageNet, 8 levels, gap: 2,064 columns), EuroSAT 64 px, 100 training
    # images per class (two draws), the 2,700 test images; ridge test accuracy, draws 0 / 1:
    # standardize 91.81 / 92.44%, center-l2 93.15 / 93.96%, none 93.15 / 93.85%; so ridge
    # defaults to center-l2, while SGD, which standardises after it anyway, lost a little with
    # it (90.63 / 91.26% vs 91.07 / 91.37%) and keeps standardize.
    normalize: str | None = option(None, choices=NORMALIZE,
                                   help="descriptor normalisation before the head: per-column "
                                   "z-score, center-l2 (subtract the training mean, L2-normalise "
                                   "rows) or none (sgd standardises after it anyway); default "
                                   "center-l2 for ridge, standardize for sgd")
    # select=512 / 1024 of 2,064: 91.81 / 92.15% (draw 0), 92.74 / 93.15% (draw 1) against
    # 91.81 / 92.44% with every column: within a draw's noise, and a second fit's cost.
    select: int = option(0, check=at_least(0), help="ridge: keep this many descriptor columns, "
                         "the groups a first ridge fit ranks best (0: all)")
    # expand=2048 with the input: 92.33 / 92.93% vs 91.81 / 92.44% for ~10x the fit time
    # (4,112 columns); center-l2 + loo + expand=2048 93.44 / 94.11% vs 93.15 / 93.96%: +0.2
    # points for 40 s instead of 5; 4096 (draw 0): 92.26% in 30x the time.
    expand: int = option(0, check=at_least(0), help="ridge: this many random ReLU features of "
                         "the descriptor before the fit (0: none)")
    # The random features alone lost: expand=2048 91.22 / 91.85% vs 92.33 / 92.93% with the
    # input.
    expand_input: bool = option(True, help="ridge --expand: fit on the descriptor's own columns "
                                "too, not only the random features")
    # loo 92.41 / 93.04% vs holdout 91.81 / 92.44% (standardize, draws 0 / 1): every row counts
    # for the choice and for the fit, at the cost of one more pass over the rows.
    alpha_select: str = option("loo", choices=ALPHA_SELECTS,
                               help="ridge: choose the strength by exact leave-one-out accuracy "
                               "on every row, or on the --holdout rows")
    sgd: SgdOptions = field(default_factory=SgdOptions)
    precision: str = option("fp32", choices=CONCRETE_PRECISIONS, flag="--cache-precision",
                            help="precision of the trunk pass that fills the cache")
    batch_size: int = option(500, check=at_least(1), flag="--cache-batch-size",
                             help="images per trunk pass batch at up to 64 px; larger inputs go "
                             "in proportionally fewer (224 px: 40 of the default 500)")
    # EuroSAT, 100 images per class, ridge center-l2 + loo, draws 0 / 1 / 2
    # (benchmarks/descriptor_options.py): none 93.15 / 93.96 / 93.11%, flip 93.26 / 93.85 /
    # 93.00%, dihedral 94.22 / 94.19 / 93.70% (+0.63 points) for a feature pass of 31-34 s
    # instead of 11-18 s (one thread). Off by default: which symmetries keep a label is the
    # data's to say, and 8x the rows of 24,300 images would break adapt's 3-minute target.
    train_views: str = option("none", choices=tuple(VIEW_TRANSFORMS),
                              help="cache fixed copies of every training image too: flip (the "
                              "mirror) or dihedral (8 flips and quarter turns, for images with "
                              "no up, e.g. satellite); the trunk pass over the training images "
                              "runs 2x or 8x, strengths are chosen leaving whole images out")
    device: str = option_like(TrainConfig, "device", "auto")
    rebuild: bool = option(False, help="build the cache again even if one exists for this key")

    def validate(self) -> None:
        validate_fields(self, CacheError)
        if self.hidden and self.method != "sgd":
            raise CacheError("--hidden: a hidden layer needs --method sgd (ridge is linear)")
        for name in ("select", "expand"):
            if getattr(self, name) and self.method != "ridge":
                raise CacheError(f"--{name}: needs --method ridge")

    @property
    def normalization(self) -> str:
        """``normalize``, or the default measured for the method."""
        if self.normalize is not None:
            return self.normalize
        return "center-l2" if self.method == "ridge" else "standardize"


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
              options: HeadOptions, *, progress: bool = False) -> CacheResult:
    """The cache (found or built) of ``model``'s trunk over ``data`` for these options;
    ``progress``: a progress line per split while the trunk runs."""
    levels, pool = resolve_layout(cache_path, model, options)
    spec = CacheSpec(levels, pool, data.mean, data.std, precision=options.precision,
                     batch_size=options.batch_size, device=resolve_device(options.device),
                     progress=progress, train_views=options.train_views)
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
    """A new head fitted on the cache's training rows, reading raw descriptors (without the
    ridge moments ``--add`` would need: see :func:`fit_head`)."""
    head, details, _ = fit_cached_head_with_stats(cache, stage_channels, options,
                                                  keep_moments=False)
    return head, details


def fit_cached_head_with_stats(cache: FeatureCache, stage_channels: Sequence[int],
                               options: HeadOptions, *, keep_moments: bool = True,
                               ) -> tuple[LevelHead, dict[str, Any], RidgeFit | None]:
    """:func:`fit_cached_head`, and the ridge fit (with its moments, unless not
    ``keep_moments`` and the fit ran in the dual) when the method is ridge."""
    options.validate()
    levels, pool = cache.key["levels"], cache.key["pool"]
    k = len(cache.classes)
    expected = LevelHead(stage_channels, levels, pool, k).first_linear.in_features
    if expected != cache.width:
        raise CacheError(f"{cache.path}: descriptors are {cache.width} wide, a head over "
                         f"stages {levels} ({pool}) of this trunk reads {expected}")
    features, labels = cache.features("train"), cache.labels("train")
    ridge = {"alphas": options.alphas, "holdout": options.holdout, "seed": options.seed,
             "alpha_select": options.alpha_select, "views": cache.views}
    normalize = options.normalization
    transform = build_transform(features, labels, k, pool, normalize=normalize,
                                select=options.select, expand=options.expand,
                                expand_input=options.expand_input, **ridge)
    settings = transform.settings if transform is not None else None
    head = LevelHead(stage_channels, levels, pool, k, options.hidden, transform=settings)
    if transform is not None:
        head.transform.load_state_dict(transform.state_dict())
    rows = transform_rows(features, transform)
    shape = {"normalize": normalize, "select": options.select,
             "expand": options.expand, "expand_input": options.expand_input,
             "head_input_width": rows.width}
    if options.method == "ridge":
        fit = fit_ridge(rows, labels, k, standardize=normalize == "standardize",
                        keep_moments=keep_moments, **ridge)
        set_ridge_weights(head, fit.weight, fit.bias, fit.temperature)
        details: dict[str, Any] = {"alpha": fit.alpha, "lambda": fit.lam,
                                   "temperature": fit.temperature,
                                   "alpha_select": options.alpha_select,
                                   "holdout_acc": _by_alpha(fit.holdout_acc),
                                   "loo_acc": _by_alpha(fit.loo_acc),
                                   "loo_mse": _by_alpha(fit.loo_mse), **shape}
        return head, details, fit
    sgd = _fit_sgd_through(head, rows, labels, options.sgd)
    details = {"hidden": options.hidden, "epochs": options.sgd.epochs,
               "epoch_seconds": sgd.epoch_seconds, "train_loss": sgd.train_loss,
               "train_acc": sgd.train_acc, **shape}
    return head, details, None


def _by_alpha(values: dict[float, float]) -> dict[str, float]:
    return {str(alpha): value for alpha, value in values.items()}


@torch.no_grad()
def set_ridge_weights(head: LevelHead, weight: torch.Tensor, bias: torch.Tensor,
                      temperature: float) -> None:
    """The head's classifier: the ridge map (k x d, float64) times its calibration factor."""
    head.classifier.weight.copy_(temperature * weight)
    head.classifier.bias.copy_(temperature * bias)


def _fit_sgd_through(head: LevelHead, rows: Any, labels: np.ndarray, options: SgdOptions) -> Any:
    """SGD on the transformed descriptors (in RAM, as SGD holds its rows anyway): the transform
    is fixed, so it is taken out of the head while its layers train on its output."""
    if rows.transform is None:
        return fit_sgd(head, rows.features, labels, options)
    transformed = torch.cat([rows[i : i + CHUNK] for i in range(0, len(rows), CHUNK)])
    transform, head.transform = head.transform, torch.nn.Identity()
    try:
        return fit_sgd(head, transformed.float().numpy(), labels, options)
    finally:
        head.transform = transform


def fit_head(source: Source, data: DataSplits, out_dir: Path, cache_path: Path,
             options: HeadOptions) -> HeadFit:
    """Fit a head for ``data`` (prepared by :func:`hfsnet.transfer.source.for_trunk`) on the cache
    of ``source``'s trunk; save trunk + head to ``out_dir`` as a complete checkpoint."""
    options.validate()
    data = for_trunk(source, data)
    model = source.model
    found = cache_for(model, data, cache_path, options)
    start = time.perf_counter()
    head, details, fit = fit_cached_head_with_stats(found.cache, model.stage_channels(), options)
    fit_seconds = time.perf_counter() - start
    test = score_descriptors(head, found.cache.features("test"), found.cache.labels("test"),
                             data.num_classes)
    install_head(model, head)
    result = HeadFit(options.method, head.levels, head.pool, found.cache.width, test.acc,
                     test.loss, fit_seconds, str(found.cache.path), found.built, found.seconds,
                     details)
    state = None
    if fit is not None and fit.moments is not None:
        state = ridge_state(model, found.cache, data.classes, fit.moments, fit.alpha,
                            fit.temperature, options.normalization == "standardize")
    save_head_run(out_dir, source, data, model, result, state)
    return result


def ridge_state(model: FeatureClassifier, cache: FeatureCache, classes: Sequence[str],
                moments: Moments, alpha: float, temperature: float,
                standardize: bool) -> RidgeState:
    """What ``fit-head --add`` needs to extend the ridge head of ``model`` fitted on ``cache``."""
    name, options = trunk_spec(model)
    return RidgeState(moments, {
        "classes": list(classes), "alpha": alpha, "temperature": temperature,
        "standardize": standardize,
        "trunk": {"model": name, "options": options, "weights": weights_digest(model)},
        "preprocessing": cache.key["preprocessing"], "levels": list(cache.key["levels"]),
        "pool": cache.key["pool"], "descriptor_width": cache.width,
        "transform": model.head.transform_settings})


def save_head_run(out_dir: Path, source: Source, data: DataSplits, model: FeatureClassifier,
                  result: HeadFit, state: RidgeState | None = None,
                  classes: Sequence[str] | None = None) -> None:
    """checkpoint.safetensors (trunk + new head), the ridge statistics (``state``, for
    ``--add``) and result.json in ``out_dir``; ``classes``: the head's, when not ``data``'s."""
    meta = {**data_meta(data), "config": source.config, "epoch": 0, "history": [],
            "head_fit": {**result.to_dict(), "source": str(source.origin)}}
    if classes is not None:
        meta["classes"] = list(classes)
    payload = {**result.to_dict(), "params": count_params(model), "out_dir": str(out_dir)}
    files = {out_dir / CHECKPOINT_NAME: checkpoint_bytes(model, meta),
             out_dir / "result.json": json.dumps(payload, indent=2).encode()}
    if state is not None:
        files[out_dir / STATS_NAME] = state_bytes(state)
    # All or nothing: a full disk leaves an earlier fit in out_dir whole.
    atomic_write_files(files)
    if state is None:
        (out_dir / STATS_NAME).unlink(missing_ok=True)  # stale statistics of an earlier fit

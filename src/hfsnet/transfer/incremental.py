"""``fit-head --add``: extend a ridge head with new images (of its classes or of new ones) from
the sufficient statistics saved beside it, without the old images.

The saved moments are of the rows as the head's linear layer reads them, so the head's transform
(kept columns, centring, random features) is reused as it is, never refitted: the result equals a
ridge refit on all rows through that same transform, with the same alpha. Under ``standardize``
the column scale is recomputed from the merged moments, as a refit would; the temperature is the
first fit's (there are no held-out rows to calibrate on). The head's classes are the old ones in
their order, then DATA's new ones in DATA's order.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hfsnet.data import DataSplits
from hfsnet.models.head import LevelHead
from hfsnet.models.level_head import install_head, trunk_spec
from hfsnet.transfer.errors import CacheError
from hfsnet.transfer.extract import weights_digest
from hfsnet.transfer.fit import (
    HeadFit,
    HeadOptions,
    cache_for,
    ridge_state,
    save_head_run,
    score_descriptors,
    set_ridge_weights,
)
from hfsnet.transfer.ridge import accumulate, feature_scale, solve
from hfsnet.transfer.source import Source, for_trunk
from hfsnet.transfer.stats import STATS_NAME, RidgeState, Rows, load_state


def stats_path(source: Source) -> Path:
    """The statistics file beside ``source``'s checkpoint."""
    return source.checkpoint.path.parent / STATS_NAME


def check_state(path: Path, state: RidgeState, source: Source) -> LevelHead:
    """The head of ``source``'s model, after checking that ``state`` (read from ``path``) is its
    statistics: same trunk (name, options, weights), levels, pooling and transform."""
    model = source.model
    name, options = trunk_spec(model)
    trunk = {"model": name, "options": options, "weights": weights_digest(model)}
    if state.meta.get("trunk") != trunk:
        theirs = (state.meta.get("trunk") or {}).get("model")
        raise CacheError(f"{path}: statistics of another trunk ({theirs!r}, or other weights or "
                         f"options) than the checkpoint {source.checkpoint.path}'s ({name!r})")
    head = model.head
    if not isinstance(head, LevelHead) or [state.meta.get("levels"), state.meta.get("pool"),
                                           state.meta.get("transform")] != [
            head.levels, head.pool, head.transform_settings]:
        raise CacheError(f"{path}: the statistics do not describe the head of "
                         f"{source.checkpoint.path} (levels, pooling or transform differ)")
    if list(state.meta["classes"]) != source.classes:
        raise CacheError(f"{path}: statistics of classes {state.meta['classes']}, the checkpoint "
                         f"{source.checkpoint.path} has {source.classes}")
    return head


def merged_classes(old: Sequence[str], new: Sequence[str]) -> list[str]:
    return list(old) + [name for name in new if name not in old]


def add_to_head(source: Source, data: DataSplits, out_dir: Path, cache_path: Path,
                options: HeadOptions) -> HeadFit:
    """Add ``data``'s training images to the ridge head of ``source`` (a fit-head output) and
    save the refitted head, scored on ``data``'s test images, to ``out_dir``."""
    path = stats_path(source)
    state = load_state(path)
    old = check_state(path, state, source)
    data = for_trunk(source, data)
    model = source.model
    preprocessing = state.meta.get("preprocessing", {})
    # the added images get the views the statistics' rows had, as a refit on all rows would
    layout = {"levels": ",".join(map(str, old.levels)), "pool": old.pool,
              "train_views": preprocessing.get("train_views", "none")}
    found = cache_for(model, data, cache_path, HeadOptions(**{**vars(options), **layout}))
    if {k: v for k, v in found.cache.key["preprocessing"].items() if k != "precision"} != {
            k: v for k, v in preprocessing.items() if k != "precision"}:
        raise CacheError(f"{path}: the statistics' rows were preprocessed differently (image "
                         f"size or normalisation) from --add's images")
    classes = merged_classes(source.classes, data.classes)
    relabel = np.array([classes.index(name) for name in data.classes])
    start = time.perf_counter()
    transform = old.transform if old.transform_settings is not None else None
    train = Rows(found.cache.features("train"), transform)
    if train.width != len(state.moments.sx):
        raise CacheError(f"{path}: statistics of {len(state.moments.sx)}-wide rows, the head "
                         f"reads {train.width}")
    added, _ = accumulate(train, relabel[found.cache.labels("train")], len(classes),
                          np.zeros(len(train), dtype=bool))
    moments = state.moments.with_classes(len(classes)).merged(added)
    alpha, calibration = float(state.meta["alpha"]), float(state.meta["temperature"])
    weight, bias, lam = solve(moments, alpha, feature_scale(moments, state.meta["standardize"]))
    head = LevelHead(model.stage_channels(), old.levels, old.pool, len(classes),
                     transform=old.transform_settings)
    if transform is not None:
        head.transform.load_state_dict(transform.state_dict())
    set_ridge_weights(head, weight, bias, calibration)
    fit_seconds = time.perf_counter() - start
    test = score_descriptors(head, found.cache.features("test"),
                             relabel[found.cache.labels("test")], len(classes))
    install_head(model, head)
    new_classes = classes[len(source.classes):]
    details = {"added_rows": added.n, "rows": moments.n, "new_classes": new_classes,
               "alpha": alpha, "lambda": lam, "temperature": calibration,
               "stats": str(path)}
    result = HeadFit("ridge", head.levels, head.pool, found.cache.width, test.acc, test.loss,
                     fit_seconds, str(found.cache.path), found.built, found.seconds, details)
    new_state = ridge_state(model, found.cache, classes, moments, alpha, calibration,
                            state.meta["standardize"])
    save_head_run(out_dir, source, data, model, result, new_state, classes)
    return result

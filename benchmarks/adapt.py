"""Adaptation benchmark: a pretrained EfficientNet-Lite0 (ImageNet) adapted to new image data.

Tasks: EuroSAT RGB (64 px native; ``eurosat-96``, ``eurosat-128``: upsampled by the trunk;
96 px maps have odd sides, so that task takes only the ``cli-adapt`` methods),
CIFAR-10 (32 px native; ``cifar10-64``, ``cifar10-96`` (cli cells only), ``cifar10-128``: the
same images upsampled by the trunk),
Fashion-MNIST (28 px grayscale, replicated to 3 channels and upsampled to 32 px by the trunk;
``fashion-mnist-48`` and ``fashion-mnist-96``, cli cells only, and ``fashion-mnist-64``: to 48,
96 and 64 px).
Regimes: 100 training images per class (``100``, VTAB-1k style, drawn by ``few_shot`` with the
seed) and every training image (``all``); the whole test split always. Methods (a cell is
task x regime x method x seed):

    cli-adapt        ``hfsnet adapt`` itself as a subprocess, timed from process start to exit
                     (its default taps: every block; cells before 2026-12-07 21:00 had every
                     stage, which ``cli-adapt-stages`` keeps)
    cli-adapt-flip, cli-adapt-dihedral, cli-adapt-dihedral-expand   the same with
                     ``--train-views flip`` (the mirror of every training image too) or
                     ``dihedral`` (8 fixed flips and turns), and ``--expand 2048``
    cli-adapt-2x2, cli-adapt-2x2-flip   ``--pool 2x2``, without and with ``--train-views flip``
    cli-adapt-2x2-holdout   ``--pool 2x2 --alpha-select holdout`` (the strength from 10% of
                     the rows, not exact leave-one-out over all: for many rows of wide features)
    cli-adapt-finetune   ``hfsnet adapt --finetune``: its head on every block, then the
                     ``finetune`` recipe's two-rate fine-tune from it; the cell's accuracy is the
                     fine-tuned model's, its seconds the whole command's (the head's own test
                     pass included), the head's accuracy kept as ``head_test_acc``
    cli-adapt-2x2-finetune   the same from the ``--pool 2x2`` head
    logreg-last      multinomial logistic regression (torch LBFGS on standardised columns, L2
                     strength chosen on a 10% holdout) on the last level, global-average-pooled
    ridge-last       ridge on the last level (gap)
    ridge-all        ridge on all 8 levels (gap), standardised columns, strength on a holdout
    ridge-all-cl2    ridge-all with --normalize center-l2 --alpha-select loo
    ridge-all-2x2    ridge on all levels, 2x2 pooled
    ridge-select     ridge-all with --select 1024
    ridge-expand     ridge-all with --expand 2048 (random ReLU features, input kept)
    ridge-all-2x2-cl2, ridge-expand-cl2   ridge-all-2x2 and ridge-expand with center-l2 + LOO
    sgd-last, sgd-all, sgd-all-2x2   a linear head trained by AdamW on the cache
    level-N          ridge on level N alone (gap): the per-level probe
    ft-1rate         fine-tuning, one learning rate for trunk and head (fresh head)
    ft-2rate         fine-tuning, trunk at 0.2x the head's rate (fresh head)
    ft-2rate-ridge   the ridge-all head fitted and installed first, then ft-2rate from it
    ft-*-batch       the same fine-tune with ``--norm-stats batch`` (batch norms normalise by
                     each batch and update their statistics; the fine-tunes above keep the
                     trunk's ImageNet statistics, hfsnet's default)
    ft-*-eN          the same fine-tune for N epochs instead of 5 (``ft-2rate-ridge-e20``):
                     where fine-tuning stops gaining, which its 5-epoch cells cannot show
    scratch          hfs-air-s trained from scratch with the ``fast`` recipe

One feature cache per task (all levels, 2x2 pooled, train + test at the task's side) serves
every head: a gap column is the mean of its channel's four 2x2 cells, exact because every
level's map side is even or 1 at these sides (:func:`check_exact_gap` asserts it), and the
100/class rows are the ones ``few_shot`` draws (:func:`few_shot_rows` replays its draw on the
cached labels; checked against ``few_shot`` itself). A head cell's wall time is its fit and
test scoring plus the feature pass of its regime: for ``all`` the full cache's build, for
``100`` the build of a real 100/class cache (1,000 train + the test split; built once per task,
seed 0, and its rows compared with the sliced ones).

    .venv/bin/python benchmarks/adapt.py --methods cli-adapt --tasks eurosat --seeds 0
    .venv/bin/python benchmarks/adapt.py --regimes 100 --methods heads
    .venv/bin/python benchmarks/adapt.py --regimes 100 --methods ft --tasks eurosat --seeds 0
    .venv/bin/python benchmarks/adapt.py --report   # docs/results/adapt/ from --results

``--methods`` takes names or the groups ``heads``, ``levels``, ``ft``. Every finished cell is
one JSON line in WORK/cells.jsonl and a rerun skips it; each invocation merges every cell of
the log into --results with its command line and load averages (a --work that lacks cells of an
existing --results file, such as a fresh checkout's, first takes them from it). ``--report``
runs nothing: it renders the report from --results as committed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hfsnet.data import DataSplits, load_dataset, to_rgb
from hfsnet.models import create_model
from hfsnet.models.level_head import install_head
from hfsnet.train import resolve_config, train
from hfsnet.train.allocator import allocator_in_effect, retain_freed_memory
from hfsnet.train.runtime import cpu_description
from hfsnet.transfer.finetune import FinetuneOptions, build_finetuner
from hfsnet.transfer.fit import HeadOptions, cache_for, fit_cached_head, score_descriptors
from hfsnet.transfer.source import Source, for_trunk
from hfsnet.transfer.subsets import few_shot

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared/datasets"
MODEL = "efficientnet-lite0"
TASKS = {
    "eurosat": {"spec": str(DATASETS / "eurosat-rgb.tar.gz"), "side": 64},
    "cifar10": {"spec": str(DATASETS / "cifar10-jpg.tar.gz"), "side": 32},
    "fashion-mnist": {"spec": "fashion-mnist", "side": 32},
    "cifar10-64": {"spec": str(DATASETS / "cifar10-jpg.tar.gz"), "side": 64},
    "cifar10-96": {"spec": str(DATASETS / "cifar10-jpg.tar.gz"), "side": 96},  # cli cells only
    "cifar10-128": {"spec": str(DATASETS / "cifar10-jpg.tar.gz"), "side": 128},
    "eurosat-96": {"spec": str(DATASETS / "eurosat-rgb.tar.gz"), "side": 96},  # cli cells only
    "eurosat-128": {"spec": str(DATASETS / "eurosat-rgb.tar.gz"), "side": 128},
    "fashion-mnist-48": {"spec": "fashion-mnist", "side": 48},  # cli cells only
    "fashion-mnist-64": {"spec": "fashion-mnist", "side": 64},
    "fashion-mnist-96": {"spec": "fashion-mnist", "side": 96},  # cli cells only
    "fashion-mnist-128": {"spec": "fashion-mnist", "side": 128},
}
REGIMES = ("100", "all")
PER_CLASS = 100
# name: (HeadOptions changes, levels: "all" or "last" or a level number, pool)
HEADS: dict[str, tuple[dict[str, Any], str, str]] = {
    "ridge-last": ({}, "last", "gap"),
    "ridge-all": ({}, "all", "gap"),
    "ridge-all-cl2": ({"normalize": "center-l2", "alpha_select": "loo"}, "all", "gap"),
    "ridge-all-2x2": ({}, "all", "2x2"),
    "ridge-select": ({"select": 1024}, "all", "gap"),
    "ridge-expand": ({"expand": 2048}, "all", "gap"),
    "ridge-all-2x2-cl2": ({"normalize": "center-l2", "alpha_select": "loo"}, "all", "2x2"),
    "ridge-expand-cl2": ({"expand": 2048, "normalize": "center-l2", "alpha_select": "loo"},
                         "all", "gap"),
    "sgd-last": ({"method": "sgd"}, "last", "gap"),
    "sgd-all": ({"method": "sgd"}, "all", "gap"),
    "sgd-all-2x2": ({"method": "sgd"}, "all", "2x2"),
}
LEVELS = 8  # EfficientNet-Lite0, taps=stages
FINETUNES = ("ft-2rate", "ft-1rate", "ft-2rate-ridge")
BATCH_STATS = "-batch"  # suffix of a fine-tune method run with --norm-stats batch
EPOCH_SUFFIX = "-e"  # ft-2rate-e20: that fine-tune for 20 epochs
GROUPS = {"heads": ["logreg-last", *HEADS], "levels": [f"level-{n}" for n in range(1, 9)],
          "ft": list(FINETUNES), "ft-batch": [m + BATCH_STATS for m in FINETUNES]}
SGD_EPOCHS = {"100": 30, "all": 10}  # all: 10 passes over 24,300-60,000 rows
FT_EPOCHS = 5
HEAD_LR = 2e-3
# benchmarks/transfer.py's pinned fine-tuning recipe: AdamW, one-cycle, batch 64, crops, flips;
# precision auto (cells before 2026-12-02 15:30 forced bf16, which on an AVX2-only EPYC ran
# EfficientNet-Lite0's step at 0.1x fp32's speed; each cell records the precision that ran).
RECIPE = {"optimizer": "adamw", "lr": HEAD_LR, "weight_decay": 5e-4, "schedule": "onecycle",
          "warmup_fraction": 0.15, "batch_size": 64, "crop_padding": 4, "flip": True,
          "precision": "auto", "channels_last": True}
# Full CIFAR-10 from scratch is already measured: reused, not retrained.
SCRATCH_CIFAR_ALL = {"test_acc": 0.8590, "seconds": 271.0, "n": 5,
                     "source": "benchmarks/results/time_to_accuracy.json and README: "
                     "`hfsnet train --recipe fast`, mean of 5 seeds (85.56-86.21%), 268-282 s"}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, default=REPO / "runs/adapt-bench")
    p.add_argument("--results", type=Path, default=REPO / "benchmarks/results/adapt.json")
    p.add_argument("--tasks", default="eurosat,cifar10,fashion-mnist")
    p.add_argument("--regimes", default="100,all")
    p.add_argument("--methods", default="heads")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--report", action="store_true",
                   help="run nothing: write docs/results/adapt/ from --results")
    p.add_argument("--report-dir", type=Path, default=REPO / "docs/results/adapt")
    return p.parse_args(argv)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


# ---------------------------------------------------------------- data, trunk and caches


def load_task(task: str) -> DataSplits:
    """The task's images at their native size, 3 channels (grayscale replicated)."""
    return to_rgb(load_dataset(TASKS[task]["spec"]))


def build_trunk(task: str, num_classes: int) -> tuple[Any, Source]:
    model = create_model(MODEL, num_classes=num_classes, image_size=TASKS[task]["side"])
    return model, Source.pretrained(model)


def check_exact_gap(model: Any, side: int) -> list[int]:
    """Every level's map side at input ``side``; all even or 1, so gap = mean of 2x2 cells."""
    with torch.no_grad():
        maps = model.eval().forward_features(torch.zeros(1, 3, side, side))
    sides = [(int(m.shape[-2]), int(m.shape[-1])) for m in maps]
    assert all(s == 1 or s % 2 == 0 for hw in sides for s in hw), sides
    return [h for h, _ in sides]


def few_shot_rows(labels: np.ndarray, classes: int, count: int, seed: int) -> np.ndarray:
    """The training rows ``few_shot(data, count, seed)`` keeps, from the labels alone (the same
    generator draws as ``subsets.sample_per_class``)."""
    generator = torch.Generator().manual_seed(seed)
    labels_t = torch.from_numpy(np.asarray(labels))
    picked = []
    for label in range(classes):
        members = torch.nonzero(labels_t == label).flatten()
        picked.append(members[torch.randperm(len(members), generator=generator)[:count]])
    return torch.cat(picked).sort().values.numpy()


@dataclass
class CacheView:
    """Rows and levels of a cache, in RAM, read like a FeatureCache by ``fit_cached_head``."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    levels: list[int]
    pool: str
    classes: list[str]
    path: Path

    def features(self, split: str) -> np.ndarray:
        return self.train_x if split == "train" else self.test_x

    def labels(self, split: str) -> np.ndarray:
        return self.train_y if split == "train" else self.test_y

    @property
    def key(self) -> dict[str, Any]:
        return {"levels": self.levels, "pool": self.pool}

    @property
    def width(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def views(self) -> int:
        return 1  # one row per training image: the grid caches no --train-views


def level_columns(channels: Sequence[int], levels: Sequence[int], pool: str) -> np.ndarray:
    """Columns of ``levels`` in the 2x2 cache (channel-major, 4 cells each); for gap, the
    caller averages each channel's 4 cells."""
    starts = np.cumsum([0, *[4 * c for c in channels]])
    return np.concatenate([np.arange(starts[lv - 1], starts[lv]) for lv in levels])


def view_rows(features: np.ndarray, rows: np.ndarray | None, columns: np.ndarray,
              pool: str) -> np.ndarray:
    x = np.asarray(features[rows] if rows is not None else features)[:, columns]
    if pool == "2x2":
        return x
    return x.reshape(len(x), -1, 4).astype(np.float32).mean(-1).astype(np.float16)


@dataclass
class TaskCache:
    """A task's full 2x2 cache, and what its feature passes cost."""

    cache: Any
    channels: list[int]
    full_seconds: float  # building it (train + test)
    few_seconds: float  # building a real 100/class cache (1,000 train + test)
    few_check: dict[str, Any]

    def view(self, regime: str, seed: int, levels: list[int], pool: str) -> CacheView:
        columns = level_columns(self.channels, levels, "2x2")
        train_y = self.cache.labels("train")
        rows = (few_shot_rows(train_y, len(self.cache.classes), PER_CLASS, seed)
                if regime != "all" else None)
        train_x = view_rows(self.cache.features("train"), rows, columns, pool)
        return CacheView(train_x, train_y[rows] if rows is not None else train_y,
                         view_rows(self.cache.features("test"), None, columns, pool),
                         self.cache.labels("test"), levels, pool, self.cache.classes,
                         self.cache.path)

    def feature_seconds(self, regime: str) -> float:
        return self.full_seconds if regime == "all" else self.few_seconds


def build_seconds(cache: Any) -> float:
    return float(json.loads((Path(cache.path) / "manifest.json").read_text())["build_seconds"])


def task_cache(task: str, data: DataSplits, work: Path) -> TaskCache:
    """The full cache (built once), and a real 100/class seed-0 cache for its build time and
    to check that its rows equal the rows sliced from the full one."""
    model, source = build_trunk(task, data.num_classes)
    check_exact_gap(model, TASKS[task]["side"])
    options = HeadOptions(levels="all", pool="2x2")
    full = cache_for(model, for_trunk(source, data), work / "cache" / task, options).cache
    # few_shot first: it sets the subset's own statistics, for_trunk then the trunk's.
    small = cache_for(model, for_trunk(source, few_shot(data, PER_CLASS, 0)),
                      work / "cache" / f"{task}-100", options).cache
    result = TaskCache(full, model.stage_channels(), build_seconds(full), build_seconds(small),
                       {})
    rows = few_shot_rows(full.labels("train"), data.num_classes, PER_CLASS, 0)
    sliced = np.asarray(full.features("train")[rows], dtype=np.float32)
    direct = np.asarray(small.features("train"), dtype=np.float32)
    result.few_check = {
        "labels_equal": bool(np.array_equal(full.labels("train")[rows], small.labels("train"))),
        "max_abs_diff": float(np.abs(sliced - direct).max()),
        "max_abs_value": float(np.abs(direct).max())}
    return result


# ---------------------------------------------------------------- head cells


def head_options(method: str, regime: str, seed: int) -> tuple[HeadOptions, list[int], str]:
    change, levels, pool = HEADS[method]
    options = HeadOptions(normalize="standardize", select=0, expand=0, alpha_select="holdout",
                          seed=seed)
    for name, value in change.items():
        setattr(options, name, value)
    options.sgd.epochs = SGD_EPOCHS[regime]
    options.sgd.seed = seed
    return options, ([LEVELS] if levels == "last" else list(range(1, LEVELS + 1))), pool


def head_cell(method: str, regime: str, seed: int, cache: TaskCache) -> dict[str, Any]:
    """A cache head: fit on the view's training rows, scored on the cached test rows."""
    if method.startswith("level-"):
        options, levels, pool = head_options("ridge-all", regime, seed)
        levels = [int(method.split("-")[1])]
    else:
        options, levels, pool = head_options(method, regime, seed)
    view = cache.view(regime, seed, levels, pool)

    def fit() -> tuple[float, dict[str, Any]]:
        head, details = fit_cached_head(view, cache.channels, options)
        test = score_descriptors(head, view.test_x, view.test_y, len(view.classes))
        return test.acc, details

    (acc, details), seconds = timed(fit)
    feature = cache.feature_seconds(regime)
    return {"test_acc": acc, "seconds": seconds + feature, "fit_seconds": seconds,
            "feature_seconds": feature, "width": view.width, "levels": levels, "pool": pool,
            "alpha": details.get("alpha"), "head_input_width": details.get("head_input_width")}


def logreg(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
           classes: int, seed: int, l2s: Sequence[float] = (1e-4, 1e-3, 1e-2)) -> dict[str, Any]:
    """Multinomial logistic regression by full-batch LBFGS on standardised columns; the L2
    strength is the one best on a 10% holdout, then refitted on every row."""
    x = torch.from_numpy(np.asarray(train_x, dtype=np.float32))
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    x = (x - mean) / std
    y = torch.from_numpy(np.asarray(train_y)).long()
    test = (torch.from_numpy(np.asarray(test_x, dtype=np.float32)) - mean) / std
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    held, kept = order[: len(x) // 10], order[len(x) // 10:]
    holdout = {}
    for l2 in l2s:
        w, b = _lbfgs(x[kept], y[kept], classes, l2)
        holdout[l2] = ((x[held] @ w + b).argmax(1) == y[held]).float().mean().item()
    best = max(l2s, key=lambda l2: (holdout[l2], l2))
    w, b = _lbfgs(x, y, classes, best)
    acc = ((test @ w + b).argmax(1) == torch.from_numpy(np.asarray(test_y))).float().mean()
    return {"test_acc": acc.item(), "l2": best,
            "holdout_acc": {str(k): v for k, v in holdout.items()}}


def _lbfgs(x: torch.Tensor, y: torch.Tensor, classes: int, l2: float,
           steps: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.zeros(x.shape[1], classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=steps, history_size=20,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-6)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def logreg_cell(regime: str, seed: int, cache: TaskCache) -> dict[str, Any]:
    view = cache.view(regime, seed, [LEVELS], "gap")
    fit, seconds = timed(lambda: logreg(view.train_x, view.train_y, view.test_x, view.test_y,
                                        len(view.classes), seed))
    feature = cache.feature_seconds(regime)
    return {**fit, "seconds": seconds + feature, "fit_seconds": seconds,
            "feature_seconds": feature, "width": view.width, "levels": [LEVELS], "pool": "gap"}


# ---------------------------------------------------------------- training cells


def ft_config(task: str, seed: int, epochs: int) -> Any:
    return resolve_config("default", model=MODEL, data=TASKS[task]["spec"], epochs=epochs,
                          seed=seed, track_test=False, **RECIPE)


def split_finetune(method: str) -> tuple[str, str, int] | None:
    """``ft-2rate-ridge-batch-e20`` -> ("ft-2rate-ridge", "batch", 20); None for a method that
    is not a fine-tune."""
    base, epochs = method, FT_EPOCHS
    stem, _, count = method.rpartition(EPOCH_SUFFIX)
    if stem and count.isdigit() and int(count) > 0:
        base, epochs = stem, int(count)
    norm_stats = "batch" if base.endswith(BATCH_STATS) else "frozen"
    base = base.removesuffix(BATCH_STATS)
    return (base, norm_stats, epochs) if base in FINETUNES else None


def finetune_cell(task: str, method: str, regime: str, seed: int, data: DataSplits,
                  cache: TaskCache | None, out: Path) -> dict[str, Any]:
    """Fine-tuning from the pretrained trunk; ``ft-2rate-ridge`` installs the ridge-all head
    (fitted on the cache of the same rows) first and keeps it; a ``-batch`` method trains the
    batch norms' statistics; ``-eN`` trains N epochs."""
    target = few_shot(data, PER_CLASS, seed) if regime != "all" else data
    parsed = split_finetune(method)
    assert parsed is not None, method
    method, norm_stats, epochs = parsed
    one_rate = method == "ft-1rate"
    options = FinetuneOptions(head_lr=HEAD_LR, trunk_lr=HEAD_LR if one_rate else None,
                              norm_stats=norm_stats)
    extra: dict[str, Any] = {}

    def run() -> Any:
        model, source = build_trunk(task, data.num_classes)
        if method == "ft-2rate-ridge":
            assert cache is not None
            head_opts, levels, pool = head_options("ridge-all", regime, seed)
            view = cache.view(regime, seed, levels, pool)
            head, details = fit_cached_head(view, cache.channels, head_opts)
            install_head(model, head)
            extra["ridge_alpha"] = details.get("alpha")
            source = Source(model, {**source.meta, "classes": list(data.classes)}, None,
                            f"{MODEL} + ridge head")
        trainer, record = build_finetuner(source, target, ft_config(task, seed, epochs),
                                          out, options, progress=False, overwrite=True)
        return trainer.fit(), {**record, "precision": trainer.config.precision}

    (result, record), seconds = timed(run)
    if method == "ft-2rate-ridge":
        assert cache is not None
        extra["feature_seconds"] = cache.feature_seconds(regime)
        seconds += extra["feature_seconds"]
    return {"test_acc": result.test_acc, "seconds": seconds, "epochs": epochs,
            "epoch_seconds": [row["seconds"] for row in result.history],
            "head_lr": record["head_lr"], "trunk_lr": record["trunk_lr"],
            "norm_stats": record["norm_stats"], "precision": record["precision"],
            "head": record.get("head"), **extra}


def scratch_cell(task: str, regime: str, seed: int, data: DataSplits,
                 out: Path) -> dict[str, Any]:
    target = few_shot(data, PER_CLASS, seed) if regime != "all" else data
    config = resolve_config("fast", data=TASKS[task]["spec"], seed=seed)
    result, seconds = timed(lambda: train(config, out, data=target, progress=False,
                                          overwrite=True))
    return {"test_acc": result.test_acc, "seconds": seconds, "epochs": result.epochs,
            "model": config.model, "recipe": "fast"}


# The ``hfsnet adapt`` cells: method -> the flags added to the plain command.
CLI_ADAPT = {"cli-adapt": [], "cli-adapt-stages": ["--model-opt", "taps=stages"],
             "cli-adapt-flip": ["--train-views", "flip"],
             "cli-adapt-dihedral": ["--train-views", "dihedral"],
             "cli-adapt-dihedral-expand": ["--train-views", "dihedral", "--expand", "2048"],
             "cli-adapt-2x2": ["--pool", "2x2"],
             "cli-adapt-2x2-flip": ["--pool", "2x2", "--train-views", "flip"],
             "cli-adapt-2x2-holdout": ["--pool", "2x2", "--alpha-select", "holdout"],
             "cli-adapt-finetune": ["--finetune"],
             "cli-adapt-2x2-finetune": ["--pool", "2x2", "--finetune"]}


def cli_adapt_cell(method: str, task: str, regime: str, seed: int,
                   work: Path) -> dict[str, Any]:
    """``hfsnet adapt`` as a user runs it, timed from process start to exit."""
    out = work / "cli" / f"{task}-{regime}-{seed}{method.removeprefix('cli-adapt')}"
    command = [".venv/bin/hfsnet", "adapt", "--model", MODEL, "--data", TASKS[task]["spec"],
               "--out", str(out), "--overwrite", "--seed", str(seed), *CLI_ADAPT[method],
               "--image-size", str(TASKS[task]["side"]), "--json"]  # the grid's side
    if regime != "all":
        command[-1:-1] = ["--per-class", str(PER_CLASS)]
    done, seconds = timed(lambda: subprocess.run(command, cwd=REPO, capture_output=True,
                                                 text=True, check=True))
    result = json.loads(done.stdout.strip().splitlines()[-1])
    cell = {"test_acc": result["test_acc"], "seconds": seconds, "command": " ".join(command),
            "feature_seconds": result["feature_seconds"], "fit_seconds": result["fit_seconds"],
            "eval_seconds": result["eval_seconds"],
            "total_seconds_inside": result["total_seconds"], "cache_built": result["cache_built"]}
    if result["finetune"] is not None:
        finetuned = result["finetune"]
        cell.update(test_acc=finetuned["test_acc"], head_test_acc=result["test_acc"],
                    epochs=finetuned["epochs"], finetune_seconds=finetuned["seconds"],
                    finetune_train_seconds=finetuned["train_seconds"],
                    precision=json.loads((Path(finetuned["out_dir"]) / "config.json")
                                         .read_text())["precision"])
    return cell


# ---------------------------------------------------------------- the grid


def read_cells(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def cell_id(cell: dict) -> tuple:
    return (cell["task"], cell["regime"], cell["method"], cell["seed"])


def expand_methods(text: str) -> list[str]:
    return [m for name in text.split(",") for m in GROUPS.get(name, [name])]


class TaskState:
    """A task's data and cache, loaded when a cell first needs them."""

    def __init__(self, task: str, work: Path) -> None:
        self.task, self.work = task, work
        self._data: DataSplits | None = None
        self._cache: TaskCache | None = None

    @property
    def data(self) -> DataSplits:
        if self._data is None:
            self._data = load_task(self.task)
        return self._data

    @property
    def cache(self) -> TaskCache:
        if self._cache is None:
            self._cache = task_cache(self.task, self.data, self.work)
            record = {"task": self.task, "full_build_seconds": self._cache.full_seconds,
                      "few_build_seconds": self._cache.few_seconds,
                      "few_rows_check": self._cache.few_check,
                      "train_rows": len(self._cache.cache.labels("train")),
                      "test_rows": len(self._cache.cache.labels("test")),
                      "width_2x2": self._cache.cache.width, "load_average": load_average()}
            print(json.dumps(record), file=sys.stderr, flush=True)
            with (self.work / "caches.jsonl").open("a") as file:
                file.write(json.dumps(record) + "\n")
        return self._cache


def run_cell(state: TaskState, regime: str, method: str, seed: int) -> dict[str, Any]:
    out = state.work / "runs" / f"{state.task}-{regime}-{method}-{seed}"
    if method in CLI_ADAPT:
        return cli_adapt_cell(method, state.task, regime, seed, state.work)
    if method == "logreg-last":
        return logreg_cell(regime, seed, state.cache)
    if method in HEADS or method.startswith("level-"):
        return head_cell(method, regime, seed, state.cache)
    if split_finetune(method) is not None:
        cache = state.cache if method.startswith("ft-2rate-ridge") else None
        return finetune_cell(state.task, method, regime, seed, state.data, cache, out)
    if method == "scratch":
        return scratch_cell(state.task, regime, seed, state.data, out)
    raise SystemExit(f"--methods: unknown method {method!r}")


def run_grid(args: argparse.Namespace, log: Path) -> None:
    done = {cell_id(c) for c in read_cells(log)}
    for task in args.tasks.split(","):
        state = TaskState(task, args.work)
        for regime in args.regimes.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                for method in expand_methods(args.methods):
                    if (task, regime, method, seed) in done:
                        continue
                    before = load_average()
                    cell = {"task": task, "regime": regime, "method": method, "seed": seed,
                            **run_cell(state, regime, method, seed),
                            "load_before": before, "load_after": load_average(),
                            "omp_threads": os.environ.get("OMP_NUM_THREADS"),
                            "cpu": cpu_description(), "allocator": allocator_in_effect(),
                            "torch_threads": torch.get_num_threads()}
                    print(json.dumps(cell), file=sys.stderr, flush=True)
                    with log.open("a") as file:
                        file.write(json.dumps(cell) + "\n")


def summarize(cells: list[dict]) -> list[dict]:
    """Mean and spread per (task, regime, method); a cell logged twice (two invocations that
    raced on it) counts once, its first record."""
    groups: dict[tuple, list[dict]] = {}
    for cell in {cell_id(c): c for c in reversed(cells)}.values():
        groups.setdefault((cell["task"], cell["regime"], cell["method"]), []).append(cell)
    rows = []
    for (task, regime, method), members in groups.items():
        accs = [c["test_acc"] for c in members]
        rows.append({"task": task, "regime": regime, "method": method, "n": len(members),
                     "seeds": sorted(c["seed"] for c in members),
                     "acc_mean": statistics.fmean(accs),
                     "acc_std": statistics.stdev(accs) if len(accs) > 1 else None,
                     "seconds_mean": statistics.fmean(c["seconds"] for c in members),
                     "load_max": max(max(c.get("load_before", [0])[:1] + c.get(
                         "load_after", [0])[:1]) for c in members)})
    return rows


def invocation(argv: list[str]) -> str:
    """The command line with the environment that changes what it measures."""
    env = "".join(f"{name}={os.environ[name]} " for name in ("OMP_NUM_THREADS", "HFSNET_MALLOC")
                  if os.environ.get(name))
    return env + ".venv/bin/python benchmarks/adapt.py " + " ".join(argv)


COMMANDS = "commands.txt"  # in --work: every grid invocation on it


def seed_work(results: Path, work: Path) -> None:
    """Start ``work`` from the cells, caches and commands of an existing ``results`` file
    that its logs lack: a fresh checkout (or a lost --work) adding cells to a committed file
    keeps its other cells, and skips them, instead of writing the file anew from the new
    cells alone."""
    if not results.is_file():
        return
    previous = json.loads(results.read_text())
    log, caches_log = work / "cells.jsonl", work / "caches.jsonl"
    have = {cell_id(c) for c in read_cells(log)}
    tasks = {c["task"] for c in read_cells(caches_log)}
    for path, rows in ((log, [c for c in previous["cells"] if cell_id(c) not in have]),
                       (caches_log, [c for c in previous.get("caches", [])
                                     if c["task"] not in tasks])):
        with path.open("a") as file:
            file.writelines(json.dumps(row) + "\n" for row in rows)
    commands = read_commands(work)
    older = [c for c in previous["commands"] if c not in commands]
    if older:
        (work / COMMANDS).write_text("".join(line + "\n" for line in older + commands))


def read_commands(work: Path) -> list[str]:
    path = work / COMMANDS
    return path.read_text().splitlines() if path.is_file() else []


def record_command(work: Path, argv: list[str]) -> None:
    """WORK/commands.txt: every grid invocation on this --work, with its start load average."""
    with (work / COMMANDS).open("a") as file:
        file.write(f"{invocation(argv)}  # started {time.strftime('%Y-%m-%d %H:%M:%S')}, load "
                   f"average {load_average()}\n")


def write_results(args: argparse.Namespace, log: Path) -> dict:
    commands = read_commands(args.work)
    cells = read_cells(log)
    caches = read_cells(args.work / "caches.jsonl")
    results = {
        "commands": commands,
        "model": f"{MODEL} (ImageNet weights; taps=stages, 8 levels, for the cache heads and "
                 "fine-tunes; cli-adapt cells: adapt's defaults, every block since 2026-12-07)",
        "tasks": TASKS, "per_class": PER_CLASS,
        "grid": {"sgd_epochs": SGD_EPOCHS, "ft_epochs": FT_EPOCHS, "head_lr": HEAD_LR,
                 "trunk_lr_two_rate": 0.2 * HEAD_LR, "recipe": RECIPE,
                 "heads": {k: {"change": v[0], "levels": v[1], "pool": v[2]}
                           for k, v in HEADS.items()}},
        "scratch_cifar10_all_reused": SCRATCH_CIFAR_ALL,
        "machine": {"cpus": os.cpu_count(), "torch": torch.__version__,
                    "python": platform.python_version(), "platform": platform.platform(),
                    "load_average_at_end": load_average()},
        "caches": caches, "summary": summarize(cells), "cells": cells,
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=1))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    argv = list(argv if argv is not None else sys.argv[1:])
    args.work.mkdir(parents=True, exist_ok=True)
    log = args.work / "cells.jsonl"
    if not args.report:
        retain_freed_memory()  # as every hfsnet command does (its cli cells run hfsnet itself)
        seed_work(args.results, args.work)
        record_command(args.work, argv)
        run_grid(args, log)
        write_results(args, log)
        return 0
    if not args.results.is_file():
        print(f"adapt.py: --results {args.results}: no such file; --report renders the results "
              "of an earlier run", file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO / "benchmarks"))
    from adapt_report import render_check, write_report
    _, page = write_report(json.loads(args.results.read_text()), args.report_dir)
    print(render_check(page, args.work / "report-screenshot.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

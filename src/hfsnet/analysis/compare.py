"""Train several models with the same data, recipe and seeds, then measure and aggregate them.

Runs live in ``DIR/runs/<model>-seed<k>/``. A finished run whose ``config.json`` equals the
config this comparison would train is reused; an unfinished one with the same config is resumed
from its checkpoint; a run directory holding any other config is an error (it is never
overwritten). The measured peak memory of each model is kept in ``DIR/measurements/<model>.json``
and reused while the measured step is the same. ``run_compare`` returns everything the report
shows, as plain JSON data.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from hfsnet.analysis.memory import StepSpec, measure_peak_memory
from hfsnet.analysis.summary import summarize
from hfsnet.data import DataSplits
from hfsnet.errors import HfsnetError
from hfsnet.fsutil import atomic_write_bytes
from hfsnet.models import create_model, get_entry
from hfsnet.train import TrainConfig, resolve_config, resume, train
from hfsnet.train.checkpoint import CheckpointError, load_checkpoint
from hfsnet.train.config import RECIPES
from hfsnet.train.evaluate import evaluate
from hfsnet.train.run import load_data
from hfsnet.train.runtime import resolve_device, resolve_precision

# Keys with their own flags: setting them through --set would make runs disagree with names.
_RESERVED_KEYS = ("model", "model_options", "data", "seed", "recipe", "epochs")


class CompareError(HfsnetError):
    """A comparison that cannot run as asked; the message names the flag or directory."""


@dataclass
class CompareSpec:
    models: list[str]
    data: str
    recipe: str
    seeds: int
    out: Path
    epochs: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields (--set)
    model_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # per model
    baseline: str | None = None  # the model without feature sharing; default: the first
    jobs: int = 1  # runs trained at once, each in its own process

    def validate(self) -> None:
        if not self.models:
            raise CompareError("--models: give at least one model name")
        if len(set(self.models)) != len(self.models):
            raise CompareError(f"--models: a model is named twice in {','.join(self.models)}")
        for name in self.models:
            get_entry(name)
        if self.seeds < 1:
            raise CompareError(f"--seeds must be >= 1, got {self.seeds}")
        if self.jobs < 1:
            raise CompareError(f"--jobs must be >= 1, got {self.jobs}")
        reserved = sorted(set(self.overrides) & set(_RESERVED_KEYS))
        if reserved:
            raise CompareError(f"--set {reserved[0]}: use the command's own flag for it")
        if self.overrides.get("track_test", True) is not True:
            raise CompareError("--set track_test: the comparison needs the test metrics of "
                               "every epoch (learning curves, test-loss rise); leave it on")
        unknown = sorted(set(self.model_options) - set(self.models))
        if unknown:
            raise CompareError(f"--model-opt {unknown[0]}:...: {unknown[0]!r} is not in --models")
        if self.baseline is not None and self.baseline not in self.models:
            raise CompareError(f"--baseline {self.baseline!r} is not in --models")

    @property
    def baseline_model(self) -> str:
        return self.baseline or self.models[0]

    def config(self, model: str, seed: int) -> TrainConfig:
        # Some recipes skip per-epoch test evaluation to save time; curves need it.
        overrides = {"track_test": True, **self.overrides}
        return resolve_config(self.recipe, model=model, data=self.data, seed=seed,
                              epochs=self.epochs, model_options=self.model_options.get(model),
                              **overrides)


def run_name(model: str, seed: int) -> str:
    return f"{model}-seed{seed}"


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def config_difference(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """Keys whose values differ. A key missing from ``saved`` was added to TrainConfig after
    that run: it counts as its default (new fields default to the old behaviour)."""
    defaults = TrainConfig().to_dict()
    saved = {**{k: defaults[k] for k in wanted if k in defaults}, **saved}
    return sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))


def ensure_run(config: TrainConfig, run_dir: Path, *, progress: bool,
               log: Callable[[str], None]) -> dict[str, Any]:
    """The finished run of ``config`` in ``run_dir``: reused, resumed, or trained now."""
    wanted = config.to_dict()
    config_file = run_dir / "config.json"
    if config_file.exists():
        differs = config_difference(_read_json(config_file), wanted)
        if differs:
            raise CompareError(f"{run_dir}: holds a run with a different config (differs in "
                               f"{', '.join(differs)}); use another --out or delete it")
        if (run_dir / "result.json").exists():
            log(f"reusing {run_dir}")
            return _read_json(run_dir / "result.json")
        try:
            log(f"resuming {run_dir}")
            return resume(run_dir, progress=progress).to_dict()
        except CheckpointError:
            log(f"no usable checkpoint in {run_dir}; training it from the start")
        # the same config, never finished: replacing its remains loses nothing
        return train(config, run_dir, progress=progress, overwrite=True).to_dict()
    log(f"training {config.model} (seed {config.seed}) in {run_dir}")
    return train(config, run_dir, progress=progress).to_dict()


def _train_in_child(config: dict[str, Any], run_dir: Path, threads: int) -> None:
    torch.set_num_threads(threads)
    ensure_run(TrainConfig.from_dict(config), run_dir, progress=False,
               log=lambda message: print(message, flush=True))


def threads_per_run(spec: CompareSpec) -> int:
    """Torch threads each training run gets: cores / jobs when runs train side by side."""
    if spec.jobs > 1:
        return max(1, (os.cpu_count() or 1) // spec.jobs)
    return int(spec.overrides.get("threads") or torch.get_num_threads())


def train_in_parallel(spec: CompareSpec, log: Callable[[str], None]) -> None:
    """Train (or resume) every run of ``spec``, ``spec.jobs`` at a time in child processes.

    Each child gets cores // jobs threads, so the jobs do not oversubscribe the cores. The
    runs' own wall times are then measured under each other's load, alike for every model."""
    threads = threads_per_run(spec)
    log(f"training {len(spec.models) * spec.seeds} runs, {spec.jobs} at a time, {threads} "
        f"thread(s) each")
    # spawn, not fork: a forked child would inherit this process's OpenMP thread pool.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=spec.jobs, mp_context=context) as pool:
        futures = [pool.submit(_train_in_child, spec.config(model, seed).to_dict(),
                               spec.out / "runs" / run_name(model, seed), threads)
                   for seed in range(spec.seeds) for model in spec.models]
        for future in futures:
            future.result()


def run_metrics(result: dict[str, Any]) -> dict[str, Any]:
    """What the report needs from one run: final, best, and overfitting measures."""
    history = result["history"]
    last = history[-1]
    best = max(history, key=lambda r: r["test_acc"])
    min_loss = min(r["test_loss"] for r in history)
    return {
        "test_acc": last["test_acc"],
        "test_loss": last["test_loss"],
        "train_acc": last["train_acc"],
        "best_test_acc": best["test_acc"],
        "best_epoch": best["epoch"],
        "gap": last["train_acc"] - last["test_acc"],
        "test_loss_rise": last["test_loss"] - min_loss,
        "train_seconds": result["train_seconds"],
        "images_per_second": result["images_per_second"],
        "epochs": result["epochs"],
        "history": history,
    }


def stat(values: list[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (None for one value) and the values themselves."""
    std = statistics.stdev(values) if len(values) > 1 else None
    return {"mean": statistics.fmean(values), "std": std, "n": len(values),
            "values": list(values)}


_AGGREGATED = ("test_acc", "test_loss", "train_acc", "best_test_acc", "gap", "test_loss_rise",
               "train_seconds", "images_per_second")


def aggregate_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {key: stat([r[key] for r in runs]) for key in _AGGREGATED}


def mean_curves(runs: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Per-epoch mean and std over seeds of train/test accuracy and loss."""
    curves: dict[str, list[float]] = {"epoch": [r["epoch"] for r in runs[0]["history"]]}
    for key in ("train_acc", "test_acc", "train_loss", "test_loss"):
        per_epoch = list(zip(*[[row[key] for row in r["history"]] for r in runs], strict=True))
        curves[key] = [statistics.fmean(v) for v in per_epoch]
        curves[key + "_std"] = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in per_epoch]
    return curves


def _peak_memory(spec: StepSpec, cache: Path, *, log: Callable[[str], None]) -> dict[str, Any]:
    """The measured peak of ``spec``, reusing ``cache`` when it holds the same spec."""
    wanted = json.loads(json.dumps(asdict(spec)))  # tuples as lists, like the saved copy
    if cache.exists():
        saved = _read_json(cache)
        if saved["spec"] == wanted:
            log(f"reusing the peak-memory measurement in {cache}")
            return saved["peak"]
    log(f"measuring the peak training-step memory of {spec.model} at batch {spec.batch_size}")
    peak = measure_peak_memory(spec).to_dict()
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(cache, json.dumps({"spec": wanted, "peak": peak}, indent=2).encode())
    return peak


def measure_model(config: TrainConfig, data: DataSplits, cache: Path, *,
                  log: Callable[[str], None]) -> dict[str, Any]:
    """Parameters, MACs, activation bytes and the measured peak training-step memory."""
    shape = (data.in_channels, *data.image_size)
    options = {"image_size": data.image_size[0], **config.model_options}
    model = create_model(config.model, num_classes=data.num_classes,
                         in_channels=data.in_channels, **options)
    precision = resolve_precision(config.precision, resolve_device(config.device), model, shape,
                                  channels_last=config.channels_last,
                                  timed=not config.deterministic)
    summary = summarize(model, shape, batch_size=config.batch_size, precision=precision)
    spec = StepSpec(
        model=config.model, model_options=options, num_classes=data.num_classes,
        input_shape=shape, batch_size=config.batch_size, precision=precision,
        optimizer=config.optimizer, lr=config.lr, weight_decay=config.weight_decay,
        momentum=config.momentum, channels_last=config.channels_last, device=config.device)
    return {"totals": summary.totals.to_dict(), "peak_memory": _peak_memory(spec, cache, log=log)}


def confusion_on_test(config: TrainConfig, run_dir: Path, data: DataSplits) -> list[list[int]]:
    """Confusion matrix of the run's final model on the test split (rows: true class)."""
    ckpt = load_checkpoint(run_dir)
    model = ckpt.build_model()
    device = next(model.parameters()).device
    result = evaluate(model, data.test, mean=data.mean, std=data.std,
                      batch_size=config.eval_batch_size, device=device,
                      precision=ckpt.meta["config"]["precision"],  # the one that trained
                      channels_last=config.channels_last)
    return result.confusion


def _sum_matrices(matrices: list[list[list[int]]]) -> list[list[int]]:
    return [[sum(cells) for cells in zip(*rows, strict=True)]
            for rows in zip(*matrices, strict=True)]


def compare_model(spec: CompareSpec, model: str, data: DataSplits, *, progress: bool,
                  log: Callable[[str], None]) -> dict[str, Any]:
    """Train (or reuse) every seed of ``model``, then measure and aggregate it."""
    runs, confusions = [], []
    for seed in range(spec.seeds):
        config = spec.config(model, seed)
        run_dir = spec.out / "runs" / run_name(model, seed)
        metrics = run_metrics(ensure_run(config, run_dir, progress=progress, log=log))
        runs.append({"seed": seed, "run_dir": str(run_dir.relative_to(spec.out)), **metrics})
        confusions.append(confusion_on_test(config, run_dir, data))
    first = spec.config(model, 0)
    return {
        "name": model,
        "options": first.model_options,
        "config": first.to_dict(),
        **measure_model(first, data, spec.out / "measurements" / f"{model}.json", log=log),
        "runs": runs,
        "aggregate": aggregate_runs(runs),
        "curves": mean_curves(runs),
        "confusion": _sum_matrices(confusions),
    }


def _environment() -> dict[str, Any]:
    """Where the numbers were measured: timing and memory depend on it."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"python": sys.version.split()[0], "torch": torch.__version__,
            "platform": platform.platform(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average": list(load) if load else None}


def run_compare(spec: CompareSpec, *, progress: bool = True,
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train, reuse or resume every run and measure every model."""
    spec.validate()
    started = time.time()
    environment_before = _environment()
    configs = [spec.config(m, seed) for m in spec.models for seed in range(spec.seeds)]
    data = load_data(configs[0])
    for config in configs[:: spec.seeds]:
        # Build each model once now, so a bad option fails before hours of training.
        create_model(config.model, num_classes=data.num_classes, in_channels=data.in_channels,
                     **{"image_size": data.image_size[0], **config.model_options})
    spec.out.mkdir(parents=True, exist_ok=True)
    if spec.jobs > 1:
        train_in_parallel(spec, log)
    models = [compare_model(spec, m, data, progress=progress, log=log) for m in spec.models]
    first = configs[0]
    recipe_epochs = RECIPES[spec.recipe].get("epochs", TrainConfig.epochs)
    return {
        "setup": {
            "models": spec.models, "baseline": spec.baseline_model, "data": spec.data,
            "dataset": data.name, "classes": data.classes, "recipe": spec.recipe,
            "seeds": spec.seeds, "jobs": spec.jobs, "threads_per_run": threads_per_run(spec),
            "epochs": first.epochs,
            "recipe_epochs": recipe_epochs,
            "overrides": spec.overrides, "model_options": spec.model_options,
            "train_size": len(data.train), "test_size": len(data.test),
            "val_size": len(data.val) if data.val is not None else 0,
            "image_shape": [data.in_channels, *data.image_size],
            "batch_size": first.batch_size, "precision": first.precision,
            "optimizer": first.optimizer, "lr": first.lr, "schedule": first.schedule,
        },
        "environment": {"start": environment_before, "end": _environment(),
                        "wall_seconds": time.time() - started},
        "models": models,
    }

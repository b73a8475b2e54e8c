"""Transfer benchmark: pretrain a trunk on five CIFAR-10 classes, transfer it to the other five.

Pretraining uses {airplane, automobile, bird, cat, deer} (25,000 images); transfer uses {dog, frog,
horse, ship, truck} with 100 or 1,000 labelled training images per class and is tested on all
5,000 test images of those classes. Per model, size and seed it compares

    scratch         the same network trained from scratch on the small set
    ridge           closed-form ridge head on the multi-level feature cache
    sgd             linear head trained by AdamW on the cache
    finetune-2rate  fine-tuning, head lr A and trunk lr 0.2 A
    finetune-1rate  fine-tuning, one lr A for everything
    cache-finetune  ridge head on the cache first, then fine-tuning with two rates

and ridge/sgd on a cache of the last stage only ("ridge-last", "sgd-last"). The wall time of a
cache method includes building its cache. It also measures, side by side: building a cache vs.
`evaluate` over the same images, an SGD epoch on the cache vs. a fine-tuning epoch on the same
images, and ridge (grid search included) on the 50,000 cached descriptors of all of CIFAR-10.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/transfer.py  # the whole grid
    .venv/bin/python benchmarks/transfer.py --models hfs-seed --sizes 100 --seeds 0 \
        --methods ridge --results /tmp/one-cell.json          # one cell, to time it

Runs go to --work (pretrained trunks there are reused); results to --results as JSON, and a
Markdown table is printed. Every finished cell is appended to WORK/cells.jsonl, so a stopped grid
resumes, and invocations on disjoint --seeds may run at once on one --work: the first pretrains
each trunk while the others wait on its lock, and the last to finish writes results holding all
the cells.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib.format import open_memmap

from hfsnet.data import DataSplits, load_dataset
from hfsnet.train import resolve_config, train
from hfsnet.train.config import TrainConfig
from hfsnet.train.evaluate import evaluate
from hfsnet.transfer.extract import CacheSpec, get_cache
from hfsnet.transfer.finetune import FinetuneOptions, build_finetuner
from hfsnet.transfer.fit import HeadOptions, fit_head
from hfsnet.transfer.ridge import fit_ridge
from hfsnet.transfer.sgd import SgdOptions
from hfsnet.transfer.source import for_trunk, load_source
from hfsnet.transfer.subsets import few_shot, select_classes

REPO = Path(__file__).resolve().parents[1]
SOURCE_CLASSES = ("airplane", "automobile", "bird", "cat", "deer")
TARGET_CLASSES = ("dog", "frog", "horse", "ship", "truck")
METHODS = ("scratch", "ridge", "sgd", "finetune-2rate", "finetune-1rate", "cache-finetune")
LAST_STAGE = ("ridge-last", "sgd-last")
HEAD_LR = 2e-3  # AdamW rate of every training run; two-rate runs give the trunk 0.2x of it


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(REPO.parent / "shared/datasets/cifar10-jpg.tar.gz"))
    p.add_argument("--work", type=Path, default=REPO / "runs/transfer")
    p.add_argument("--results", type=Path, default=REPO / "benchmarks/results/transfer.json")
    p.add_argument("--models", default="hfs-seed,hfs")
    p.add_argument("--sizes", default="100,1000", help="labelled training images per class")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--methods", default=",".join(METHODS + LAST_STAGE))
    p.add_argument("--pretrain-epochs", default="hfs-seed=15,hfs=3",
                   help="MODEL=EPOCHS,... of the default recipe on the source classes")
    p.add_argument("--epochs", default="100=30,1000=6",
                   help="SIZE=EPOCHS,...: epochs of every training method on the small set")
    p.add_argument("--sgd-epochs", type=int, default=30)
    p.add_argument("--speed", choices=("all", "ridge", "none"), default="all",
                   help="which speed checks to run (cache vs evaluate needs a trunk pass)")
    p.add_argument("--note", default="", help="a sentence on what this run left out, if anything")
    return p.parse_args(argv)


def mapping(text: str) -> dict[str, int]:
    return {key: int(value) for key, value in (part.split("=") for part in text.split(","))}


# Every training run (pretraining, scratch, fine-tuning): AdamW, one-cycle, batch 64, 4 px crops
# and flips, precision auto (bf16 where the step is faster in it), channels-last; pinned so that
# later changes of the default recipe do not change this benchmark.
RECIPE = {"optimizer": "adamw", "lr": HEAD_LR, "weight_decay": 5e-4, "schedule": "onecycle",
          "warmup_fraction": 0.15, "batch_size": 64, "crop_padding": 4, "flip": True,
          "precision": "auto", "channels_last": True}


def train_config(model: str, data: str, epochs: int, seed: int) -> TrainConfig:
    """:data:`RECIPE`, without a test pass after every epoch (only the last is reported)."""
    return resolve_config("default", model=model, data=data, epochs=epochs, seed=seed,
                          track_test=False, **RECIPE)


def pretrain(model: str, source: DataSplits, spec: str, epochs: int, work: Path) -> dict:
    """Train ``model`` on the source classes once; later runs reuse the run directory."""
    run = work / f"pretrain-{model}"
    done = run / "pretrain.json"
    # Invocations running at once on one --work: the first pretrains, the others wait for it.
    with (work / f"pretrain-{model}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.is_file():
            return json.loads(done.read_text())
        start = time.perf_counter()
        result = train(train_config(model, spec, epochs, 0), run, data=source, progress=False)
        record = {"run": str(run), "epochs": epochs, "source_test_acc": result.test_acc,
                  "train_seconds": result.train_seconds,
                  "wall_seconds": time.perf_counter() - start, "params": result.params}
        done.write_text(json.dumps(record, indent=2))
        return record


def _timed(fn: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def build_seconds(cache_path: str | Path) -> float:
    """How long filling the cache took when it was built (from its manifest)."""
    return float(json.loads((Path(cache_path) / "manifest.json").read_text())["build_seconds"])


def head_cell(source_run: Path, target: DataSplits, method: str, seed: int, work: Path,
              sgd_epochs: int) -> dict:
    """ridge/sgd (all stages) or ridge-last/sgd-last. The cells of one (model, size, seed) share
    their caches; each cell's wall time counts the trunk pass that built its cache."""
    kind, _, last = method.partition("-")
    options = HeadOptions(method=kind, levels="last" if last else "all", pool="gap", seed=seed)
    options.sgd.epochs = sgd_epochs
    options.sgd.seed = seed
    source = load_source(source_run)
    fit, seconds = _timed(lambda: fit_head(source, target, work / method, work / "cache",
                                           options))
    built = build_seconds(fit.cache_path)
    return {"test_acc": fit.test_acc, "seconds": seconds + (0.0 if fit.cache_built else built),
            "cache_build_seconds": built, "fit_seconds": fit.fit_seconds, "width": fit.width,
            "levels": fit.levels, "epoch_seconds": fit.details.get("epoch_seconds"),
            "alpha": fit.details.get("alpha")}


def finetune_cell(source_run: Path, target: DataSplits, method: str, config: TrainConfig,
                  work: Path) -> dict:
    one_rate = method == "finetune-1rate"
    # The README's table was measured before --norm-stats existed, when the trunk's batch norms
    # trained their statistics: pinned, as the recipe is (benchmarks/adapt.py measures both).
    options = FinetuneOptions(head_lr=HEAD_LR, trunk_lr=HEAD_LR if one_rate else None,
                              head_init="cache" if method == "cache-finetune" else "auto",
                              cache=work / "cache", norm_stats="batch")

    def run() -> Any:
        source = load_source(source_run)
        trainer, record = build_finetuner(source, target, config, work / method, options,
                                          progress=False)
        return trainer.fit(), record

    (result, record), seconds = _timed(run)
    cell = {"test_acc": result.test_acc, "seconds": seconds,
            "epoch_seconds": [row["seconds"] for row in result.history],
            "head_lr": record["head_lr"], "trunk_lr": record["trunk_lr"]}
    if "cache_path" in record:
        built = build_seconds(record["cache_path"])
        cell.update(cache_build_seconds=built, ridge_alpha=record["alpha"],
                    seconds=seconds + (0.0 if record["cache_built"] else built))
    return cell


def scratch_cell(model: str, target: DataSplits, config: TrainConfig, work: Path) -> dict:
    result, seconds = _timed(lambda: train(config, work / "scratch", data=target,
                                           progress=False))
    return {"test_acc": result.test_acc, "seconds": seconds}


def run_cell(model: str, source_run: Path, target: DataSplits, size: int, seed: int,
             method: str, epochs: int, work: Path, sgd_epochs: int, spec: str) -> dict:
    config = train_config(model, spec, epochs, seed)
    if method == "scratch":
        return scratch_cell(model, target, config, work)
    if method in ("ridge", "sgd", *LAST_STAGE):
        return head_cell(source_run, target, method, seed, work, sgd_epochs)
    return finetune_cell(source_run, target, method, config, work)


def cache_vs_evaluate(model: str, source_run: Path, target: DataSplits, work: Path) -> dict:
    """Building a cache vs `evaluate` over the same images, each with a freshly loaded model
    after a warm-up batch: `evaluate` as the CLI runs it (fp32, batch 500, contiguous memory)
    and with channels-last memory (which the cache build uses)."""

    def fresh() -> Any:
        source = load_source(source_run)
        data = for_trunk(source, target)
        evaluate(source.model, data.test.subset(torch.arange(500)), mean=source.mean,
                 std=source.std)
        return source, data

    source, data = fresh()
    levels = list(range(1, len(source.model.stage_channels()) + 1))
    spec = CacheSpec(levels, "gap", source.mean, source.std)
    built = get_cache(work / f"speed-{model}", source.model, data, spec, rebuild=True)
    timings = {}
    for channels_last in (False, True):
        source, data = fresh()
        _, timings[f"evaluate_seconds_channels_last_{str(channels_last).lower()}"] = _timed(
            lambda s=source, d=data, cl=channels_last: [
                evaluate(s.model, getattr(d, split), mean=s.mean, std=s.std, channels_last=cl)
                for split in ("train", "test")])
    return {"model": model, "images": len(data.train) + len(data.test),
            "cache_build_seconds": built.seconds, **timings,
            "cache_over_evaluate": built.seconds / timings["evaluate_seconds_channels_last_false"]}


def ridge_speed(work: Path, rows: int = 50_000, width: int = 600, classes: int = 10) -> dict:
    """``fit_ridge`` (13-point grid, 10% held out, refit) on float16 descriptors memory-mapped
    from a .npy file, as in a cache. The descriptors are synthetic (class means plus noise):
    ridge's cost depends only on their shape, and a real 50,000-image trunk pass of a
    600-wide trunk was beyond this run's CPU budget."""
    generator = np.random.default_rng(0)
    labels = generator.integers(0, classes, rows)
    path = work / "ridge-speed.npy"
    features = open_memmap(path, mode="w+", dtype=np.float16, shape=(rows, width))
    centers = generator.normal(0, 0.05, (classes, width))  # overlapping classes
    for start in range(0, rows, 10_000):
        part = labels[start : start + 10_000]
        features[start : start + len(part)] = centers[part] + generator.normal(
            0, 1, (len(part), width))
    features.flush()
    mapped = np.load(path, mmap_mode="r")
    fit, seconds = _timed(lambda: fit_ridge(mapped, labels, classes))
    path.unlink()
    return {"rows": rows, "width": width, "classes": classes, "seconds": seconds,
            "alpha": fit.alpha, "holdout_acc_best": max(fit.holdout_acc.values()),
            "descriptors": "synthetic float16, memory-mapped"}


def summarize(cells: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for cell in cells:
        groups.setdefault((cell["model"], cell["size"], cell["method"]), []).append(cell)
    order = {method: i for i, method in enumerate(METHODS + LAST_STAGE)}
    rows = []
    for (model, size, method), members in sorted(groups.items(), key=lambda item: (
            item[0][0], item[0][1], order.get(item[0][2], len(order)))):
        accs = [c["test_acc"] for c in members]
        secs = [c["seconds"] for c in members]
        rows.append({"model": model, "size": size, "method": method, "n": len(members),
                     "acc_mean": statistics.fmean(accs),
                     "acc_std": statistics.stdev(accs) if len(accs) > 1 else None,
                     "seconds_mean": statistics.fmean(secs)})
    return rows


def accuracy(row: dict) -> str:
    """Mean ± sample standard deviation over seeds (in parentheses); no spread from one seed."""
    spread = "" if row["acc_std"] is None else f" ± {100 * row['acc_std']:.1f}"
    return f"{100 * row['acc_mean']:.1f}{spread} ({row['n']})"


def markdown(rows: list[dict]) -> str:
    """One table per model: a row per method, accuracy and wall time per training-set size."""
    tables = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        sizes = sorted({r["size"] for r in mine})
        head = " | ".join(f"{size}/class: test acc % (seeds) | wall s" for size in sizes)
        lines = [f"**{model}**", "", f"| method | {head} |",
                 "|---|" + "---:|---:|" * len(sizes)]
        for method in dict.fromkeys(r["method"] for r in mine):
            cells = []
            for size in sizes:
                r = next((r for r in mine if r["method"] == method and r["size"] == size), None)
                cells += ["—", "—"] if r is None else [accuracy(r), f"{r['seconds_mean']:.0f}"]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        tables.append("\n".join(lines))
    return "\n\n".join(tables)


def sgd_vs_finetune(cells: list[dict]) -> list[dict]:
    """Per (model, size, seed): an SGD epoch on the cache vs a fine-tuning epoch, same images."""
    out = []
    for cell in cells:
        if cell["method"] != "sgd":
            continue
        twin = next((c for c in cells if c["method"] == "finetune-2rate" and all(
            c[k] == cell[k] for k in ("model", "size", "seed"))), None)
        if twin is None:
            continue
        sgd_epoch = statistics.median(cell["epoch_seconds"])
        ft_epoch = statistics.median(twin["epoch_seconds"])
        out.append({"model": cell["model"], "size": cell["size"], "seed": cell["seed"],
                    "sgd_epoch_seconds": sgd_epoch, "finetune_epoch_seconds": ft_epoch,
                    "speedup": ft_epoch / sgd_epoch})
    return out


def run_grid(args: argparse.Namespace, target_all: DataSplits, pretrained: dict[str, dict],
             done: list[dict], log: Path) -> None:
    """Run every requested cell not yet in ``done`` (the log makes an interrupted grid resume)."""
    epochs = mapping(args.epochs)
    for model in args.models.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            for seed in (int(s) for s in args.seeds.split(",")):
                target = few_shot(target_all, size, seed)
                for method in args.methods.split(","):
                    if any((c["model"], c["size"], c["seed"], c["method"])
                           == (model, size, seed, method) for c in done):
                        continue
                    cell = run_cell(model, Path(pretrained[model]["run"]), target, size, seed,
                                    method, epochs[str(size)], args.work / model / f"{size}-{seed}",
                                    args.sgd_epochs, args.data)
                    cell = {"model": model, "size": size, "seed": seed, "method": method,
                            "epochs": epochs[str(size)], **cell}
                    print(json.dumps(cell), file=sys.stderr, flush=True)
                    done.append(cell)
                    with log.open("a") as file:
                        file.write(json.dumps(cell) + "\n")


def read_cells(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    argv = list(argv if argv is not None else sys.argv[1:])
    args.work.mkdir(parents=True, exist_ok=True)
    log = args.work / "cells.jsonl"
    done = read_cells(log)
    data = load_dataset(args.data)
    source, target_all = (select_classes(data, SOURCE_CLASSES),
                          select_classes(data, TARGET_CLASSES))
    pretrain_epochs = mapping(args.pretrain_epochs)
    pretrained = {}
    for model in args.models.split(","):
        pretrained[model] = pretrain(model, source, args.data, pretrain_epochs[model], args.work)
        print(f"pretrained {model}: {pretrained[model]}", file=sys.stderr, flush=True)
    before = len(done)
    run_grid(args, target_all, pretrained, done, log)
    # Re-read the log: invocations on disjoint seeds may run in parallel on one --work, and the
    # results must hold every cell, not only this process's.
    done = read_cells(log)

    previous = json.loads(args.results.read_text()) if args.results.is_file() else {}
    speed = previous.get("speed", {})
    if args.speed == "all":
        largest = max(int(s) for s in args.sizes.split(","))
        speed["cache_vs_evaluate"] = [
            cache_vs_evaluate(m, Path(pretrained[m]["run"]), few_shot(target_all, largest, 0),
                              args.work) for m in args.models.split(",")]
    if args.speed != "none":
        speed["ridge"] = ridge_speed(args.work)
    speed["sgd_epoch_vs_finetune_epoch"] = sgd_vs_finetune(done)
    rows = summarize(done)
    threads = os.environ.get("OMP_NUM_THREADS")
    invocation = (f"OMP_NUM_THREADS={threads} " if threads else "") + \
        ".venv/bin/python benchmarks/transfer.py " + " ".join(argv)
    ran = len(done) > before or args.speed != "none"
    results = {
        "commands": [*previous.get("commands", []), *([invocation] if ran else [])],
        "note": args.note or previous.get("note", ""),
        "grid": {"epochs": mapping(args.epochs), "sgd_epochs": args.sgd_epochs,
                 "sgd_head": {k: v for k, v in asdict(SgdOptions()).items()
                              if k not in ("epochs", "seed")},
                 "head_lr": HEAD_LR, "trunk_lr_two_rate": 0.2 * HEAD_LR, "recipe": RECIPE},
        "machine": {"cpus": os.cpu_count(), "torch": torch.__version__,
                    "python": platform.python_version(),
                    "load_average_at_end": os.getloadavg()},
        "pretrain": {**previous.get("pretrain", {}), **pretrained},
        "summary": rows, "speed": speed, "cells": done,
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=1))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`hfsnet cache`, `hfsnet fit-head` and `hfsnet finetune`: transfer a trained trunk."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from hfsnet.cli.common import add_common, add_threads, emit
from hfsnet.data import DataError, DataSplits, data_spec, load_dataset
from hfsnet.train.config import DEVICES, OPTIMIZERS, PRECISIONS, RECIPES, SCHEDULES, resolve_config
from hfsnet.train.distributed import launch_torchrun
from hfsnet.transfer.finetune import HEAD_INITS, UNFREEZE, FinetuneOptions, finetune
from hfsnet.transfer.fit import METHODS, HeadOptions, cache_for, fit_head
from hfsnet.transfer.levels import POOLS
from hfsnet.transfer.sgd import SgdOptions
from hfsnet.transfer.source import Source, for_trunk, load_source
from hfsnet.transfer.subsets import few_shot, select_classes


def _out(args: argparse.Namespace) -> Any:
    """Where human-readable lines go: stderr when stdout carries --json."""
    return sys.stderr if args.json else sys.stdout


def target_data(args: argparse.Namespace, source: Source, val_split: float = 0.0) -> DataSplits:
    """--data, resized as the trunk's training data was, then --classes and --per-class."""
    data = load_dataset(data_spec(args.data), val_split=val_split, seed=args.seed,
                        image_size=source.config.get("image_size"))
    if args.classes:
        data = select_classes(data, [name.strip() for name in args.classes.split(",")])
    if args.per_class is not None:
        if args.per_class < 1:
            raise DataError(f"--per-class: expected a positive count, got {args.per_class}")
        data = few_shot(data, args.per_class, args.seed)
    return for_trunk(source, data)


def default_cache(args: argparse.Namespace, source: Source) -> Path:
    return Path(args.cache) if args.cache else source.checkpoint.path.parent / "feature-cache"


def head_options(args: argparse.Namespace, method: str = "ridge") -> HeadOptions:
    return HeadOptions(method=method, levels=args.levels, pool=args.pool,
                       precision=args.cache_precision, batch_size=args.cache_batch_size,
                       device=args.device, rebuild=args.rebuild, seed=args.seed)


def cmd_cache(args: argparse.Namespace) -> int:
    if args.nproc is not None:
        return launch_torchrun(args.nproc, args.argv)
    source = load_source(args.checkpoint)
    data = target_data(args, source)
    found = cache_for(source.model, data, default_cache(args, source), head_options(args))
    manifest = found.cache.manifest
    shapes = {name: entry["shape"] for name, entry in manifest["arrays"].items()}
    state = f"built in {found.seconds:.1f}s" if found.built else "reused"
    print(f"cache {found.cache.path} ({state}): {manifest['width']}-wide descriptors of "
          f"{', '.join(manifest['level_names'])} ({found.cache.key['pool']}); train "
          f"{shapes['train_features'][0]}, test {shapes['test_features'][0]} images",
          file=_out(args))
    emit(args, {"path": str(found.cache.path), "built": found.built, "seconds": found.seconds,
                "width": manifest["width"], "levels": found.cache.key["levels"],
                "level_names": manifest["level_names"], "pool": found.cache.key["pool"],
                "shapes": shapes})
    return 0


def cmd_fit_head(args: argparse.Namespace) -> int:
    source = load_source(args.checkpoint)
    data = target_data(args, source)
    options = head_options(args, args.method)
    options.hidden = args.hidden
    options.holdout = args.holdout
    options.sgd = SgdOptions(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                             weight_decay=args.weight_decay, optimizer=args.optimizer,
                             schedule=args.schedule, seed=args.seed)
    result = fit_head(source, data, Path(args.out), default_cache(args, source), options)
    state = f"built in {result.cache_seconds:.1f}s" if result.cache_built else "reused"
    print(f"{result.method} head on {result.width}-wide descriptors of stages {result.levels} "
          f"({result.pool}), fitted in {result.fit_seconds:.2f}s (cache {state}): test "
          f"accuracy {100 * result.test_acc:.2f}% on cached features; saved to {args.out}",
          file=_out(args))
    emit(args, {**result.to_dict(), "out_dir": args.out})
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    source = load_source(args.checkpoint)
    config = resolve_config(
        args.recipe, model=source.model.model_name, data=data_spec(args.data),
        epochs=args.epochs, batch_size=args.batch_size, lr=args.head_lr,
        optimizer=args.optimizer, schedule=args.schedule, weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing, seed=args.seed, device=args.device,
        precision=args.precision, val_split=args.val_split, crop_padding=args.crop_padding,
        flip=args.flip, cutout=args.cutout, threads=args.threads,
    )
    data = target_data(args, source, config.val_split)
    options = FinetuneOptions(head_lr=args.head_lr, trunk_lr=args.trunk_lr,
                              freeze_epochs=args.freeze_epochs, unfreeze=args.unfreeze,
                              train_bn=args.train_bn, head_init=args.head_init,
                              cache=default_cache(args, source),
                              head=head_options(args))
    result = finetune(source, data, config, args.out, options, progress=not args.quiet)
    print(f"test accuracy {100 * result.test_acc:.2f}% (loss {result.test_loss:.4f}) after "
          f"{result.epochs} epochs, {result.train_seconds:.1f}s training; run saved to "
          f"{args.out}", file=_out(args))
    payload = result.to_dict()
    payload.pop("history")
    emit(args, payload)
    return 0


def _data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="run directory or checkpoint file")
    p.add_argument("--data", help="dataset spec; default $HFSNET_DATA")
    p.add_argument("--classes", help="comma-separated class names to keep (relabelled in order)")
    p.add_argument("--per-class", type=int, help="training images per class, drawn by --seed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=DEVICES, default="auto")
    add_threads(p)


def _cache_flags(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--cache", help=f"{what}; default: feature-cache/ beside the checkpoint")
    p.add_argument("--levels", help="stages the descriptor reads: all (default), last, or 1,2,...")
    p.add_argument("--pool", choices=POOLS, help="per-stage pooling: gap (default) or 2x2")
    p.add_argument("--rebuild", action="store_true",
                   help="build the cache again even if one exists for this key")
    p.add_argument("--cache-precision", choices=PRECISIONS, default="fp32",
                   help="precision of the trunk pass that fills the cache")
    p.add_argument("--cache-batch-size", type=int, default=500,
                   help="images per trunk pass batch")


def add_commands(sub: Any) -> None:
    p = sub.add_parser("cache", help="run a trained trunk once over a dataset and store the "
                       "multi-level descriptors")
    _data_flags(p)
    _cache_flags(p, "cache root directory (or an existing cache)")
    p.add_argument("--out", dest="cache", help="cache root directory (same as --cache)")
    p.add_argument("--nproc", type=int, metavar="N",
                   help="build with N processes through torchrun: each extracts a shard of the "
                        "images, rank 0 merges them")
    add_common(p)
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("fit-head", help="fit a new head on a trunk's feature cache; saves a "
                       "complete checkpoint")
    _data_flags(p)
    _cache_flags(p, "cache root directory or an existing cache")
    p.add_argument("--out", required=True, help="run directory for the new checkpoint")
    p.add_argument("--method", choices=METHODS, default="ridge")
    p.add_argument("--holdout", type=float, default=0.1,
                   help="ridge: share of training rows held out to choose the strength")
    p.add_argument("--hidden", type=int, default=0, help="sgd: hidden ReLU layer width (0: none)")
    sgd = SgdOptions()
    p.add_argument("--epochs", type=int, default=sgd.epochs, help="sgd: passes over the cache")
    p.add_argument("--lr", type=float, default=sgd.lr, help="sgd: learning rate")
    p.add_argument("--batch-size", type=int, default=sgd.batch_size,
                   help="sgd: descriptors per step")
    p.add_argument("--weight-decay", type=float, default=sgd.weight_decay, help="sgd")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=sgd.optimizer, help="sgd")
    p.add_argument("--schedule", choices=SCHEDULES, default=sgd.schedule, help="sgd")
    add_common(p)
    p.set_defaults(func=cmd_fit_head)

    p = sub.add_parser("finetune", help="fine-tune a trained network on new data with separate "
                       "head and trunk learning rates")
    _data_flags(p)
    _cache_flags(p, "--head-init cache: cache root directory or an existing cache")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--recipe", default="default", choices=sorted(RECIPES))
    p.add_argument("--epochs", type=int)
    p.add_argument("--head-lr", type=float, help="head learning rate; default: the recipe's lr")
    p.add_argument("--trunk-lr", type=float, help="trunk learning rate; default 0.2 x head-lr")
    p.add_argument("--freeze-epochs", type=int, default=0,
                   help="epochs training the head only before the trunk is unfrozen")
    p.add_argument("--unfreeze", choices=UNFREEZE, default="all",
                   help="after the frozen epochs: the whole trunk, or one stage per epoch from "
                        "the deepest")
    p.add_argument("--train-bn", action=argparse.BooleanOptionalAction, default=False,
                   help="let batch norm layers of frozen stages train")
    p.add_argument("--head-init", choices=HEAD_INITS, default="auto",
                   help="auto: keep the head if the classes are unchanged, else a fresh "
                        "classifier; cache: fit a ridge head on the feature cache first")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--optimizer", choices=OPTIMIZERS)
    p.add_argument("--schedule", choices=SCHEDULES)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--precision", choices=PRECISIONS)
    p.add_argument("--val-split", type=float)
    p.add_argument("--crop-padding", type=int)
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--cutout", type=int)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    add_common(p)
    p.set_defaults(func=cmd_finetune)

"""`hfsnet cache`, `hfsnet fit-head` and `hfsnet finetune`: transfer a trained trunk."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from hfsnet.cli.common import add_common, add_overwrite, add_threads, emit, out_dir
from hfsnet.cli.config_flags import add_config_flags, given_values
from hfsnet.data import DataError, DataSplits, data_spec, load_dataset
from hfsnet.textutil import printable
from hfsnet.train.config import FINETUNE_RECIPE, RECIPES, TrainConfig, resolve_config
from hfsnet.train.distributed import is_main_process, launch_torchrun
from hfsnet.transfer.finetune import FinetuneOptions, finetune
from hfsnet.transfer.fit import HeadOptions, cache_for, fit_head
from hfsnet.transfer.incremental import add_to_head
from hfsnet.transfer.sgd import SgdOptions
from hfsnet.transfer.source import Source, for_trunk, load_source
from hfsnet.transfer.subsets import few_shot, select_classes


def _out(args: argparse.Namespace) -> Any:
    """Where human-readable lines go: stderr when stdout carries --json."""
    return sys.stderr if args.json else sys.stdout


def target_data(args: argparse.Namespace, source: Source, seed: int,
                val_split: float = 0.0, spec: str | None = None) -> DataSplits:
    """--data (or ``spec``), resized as the trunk's training data was, then --classes and
    --per-class."""
    data = load_dataset(spec or data_spec(args.data), val_split=val_split, seed=seed,
                        image_size=source.config.get("image_size"))
    if args.classes:
        data = select_classes(data, [name.strip() for name in args.classes.split(",")])
    if args.per_class is not None:
        if args.per_class < 1:
            raise DataError(f"--per-class: expected a positive count, got {args.per_class}")
        data = few_shot(data, args.per_class, seed)
    return for_trunk(source, data)


def default_cache(args: argparse.Namespace, source: Source) -> Path:
    return Path(args.cache) if args.cache else source.default_cache


def head_options(args: argparse.Namespace) -> HeadOptions:
    """HeadOptions from the flags given, its defaults for the rest."""
    return HeadOptions(**given_values(args, HeadOptions))


def cmd_cache(args: argparse.Namespace) -> int:
    if args.nproc is not None:
        return launch_torchrun(args.nproc, args.argv)
    source = load_source(args.checkpoint)
    options = head_options(args)
    data = target_data(args, source, options.seed)
    found = cache_for(source.model, data, default_cache(args, source), options)
    if not is_main_process():  # every rank built its shard; one reports (lines would interleave)
        return 0
    manifest = found.cache.manifest
    shapes = {name: entry["shape"] for name, entry in manifest["arrays"].items()}
    state = f"built in {found.seconds:.1f}s" if found.built else "reused"
    levels = ", ".join(printable(name) for name in manifest["level_names"])
    print(f"cache {printable(str(found.cache.path))} ({state}): {manifest['width']}-wide "
          f"descriptors of {levels} ({printable(found.cache.key['pool'])}); train "
          f"{shapes['train_features'][0]}, test {shapes['test_features'][0]} images",
          file=_out(args))
    emit(args, {"path": str(found.cache.path), "built": found.built, "seconds": found.seconds,
                "width": manifest["width"], "levels": found.cache.key["levels"],
                "level_names": manifest["level_names"], "pool": found.cache.key["pool"],
                "shapes": shapes})
    return 0


# HeadOptions that --add takes from the earlier fit instead of the flags.
FIXED_BY_ADD = ("method", "levels", "pool", "hidden", "holdout", "normalize", "select", "expand",
                "expand_input", "alpha_select", "train_views")


def cmd_fit_head(args: argparse.Namespace) -> int:
    source = load_source(args.checkpoint)
    options = head_options(args)
    options.sgd = SgdOptions(**given_values(args, SgdOptions))
    if args.add is not None:
        return _add_to_head(args, source, options)
    data = target_data(args, source, options.seed)
    result = fit_head(source, data, Path(args.out), default_cache(args, source), options)
    state = f"built in {result.cache_seconds:.1f}s" if result.cache_built else "reused"
    print(f"{result.method} head on {result.width}-wide descriptors of stages {result.levels} "
          f"({result.pool}), fitted in {result.fit_seconds:.2f}s (cache {state}): test "
          f"accuracy {100 * result.test_acc:.2f}% on cached features; saved to {args.out}",
          file=_out(args))
    emit(args, {**result.to_dict(), "out_dir": args.out})
    return 0


def _add_to_head(args: argparse.Namespace, source: Source, options: HeadOptions) -> int:
    fixed = sorted(set(given_values(args, HeadOptions)) & set(FIXED_BY_ADD))
    if args.data is not None or fixed:
        flags = ["--data"] if args.data is not None else []
        flags += ["--" + name.replace("_", "-") for name in fixed]
        raise DataError(f"--add: the head's data and fit come from --checkpoint; drop "
                        f"{', '.join(flags)}")
    data = target_data(args, source, options.seed, spec=data_spec(args.add))
    result = add_to_head(source, data, Path(args.out), default_cache(args, source), options)
    added = result.details
    print(f"added {added['added_rows']} images ({len(added['new_classes'])} new classes) to the "
          f"ridge head of {args.checkpoint}: {added['rows']} rows in all; test accuracy "
          f"{100 * result.test_acc:.2f}% on --add's test images; saved to {args.out}",
          file=_out(args))
    emit(args, {**result.to_dict(), "out_dir": args.out})
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    source = load_source(args.checkpoint)
    options = FinetuneOptions(**given_values(args, FinetuneOptions),
                              cache=default_cache(args, source), head=head_options(args))
    # --head-lr is the config's lr: the trainer's schedule and records follow the head's rate
    config = resolve_config(args.recipe, **{**given_values(args, TrainConfig),
                                            "model": source.model.model_name,
                                            "data": data_spec(args.data),
                                            "lr": options.head_lr})
    data = target_data(args, source, config.seed, config.val_split)
    result = finetune(source, data, config, args.out, options, progress=not args.quiet,
                      overwrite=args.overwrite)
    print(f"test accuracy {100 * result.test_acc:.2f}% (loss {result.test_loss:.4f}) after "
          f"{result.epochs} epochs, {result.train_seconds:.1f}s training; run saved to "
          f"{args.out}", file=_out(args))
    payload = result.to_dict()
    payload.pop("history")
    emit(args, payload)
    return 0


# The flags finetune shares with `hfsnet train` (its --head-lr stands for --lr).
FINETUNE_CONFIG = ("epochs", "batch_size", "optimizer", "schedule", "weight_decay",
                   "label_smoothing", "precision", "channels_last", "val_split", "crop_padding",
                   "flip", "cutout")
# The cache's layout and trunk pass: flags of cache, fit-head and finetune (--head-init cache).
CACHE_LAYOUT = ("levels", "pool", "rebuild", "precision", "batch_size", "train_views")


def _data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="run directory or checkpoint file")
    p.add_argument("--data", help="dataset spec; default $HFSNET_DATA")
    p.add_argument("--classes", help="comma-separated class names to keep (relabelled in order)")
    p.add_argument("--per-class", type=int, help="training images per class, drawn by --seed")
    add_config_flags(p, HeadOptions, only=("seed", "device"))
    add_threads(p)


def _cache_flags(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--cache", help=f"{what}; default: feature-cache/ beside the checkpoint")
    add_config_flags(p, HeadOptions, only=CACHE_LAYOUT)


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
    p.add_argument("--out", required=True, type=out_dir,
                   help="run directory for the new checkpoint")
    add_config_flags(p, HeadOptions, only=("method", "holdout", "hidden", "normalize", "select",
                                           "expand", "expand_input", "alpha_select"))
    p.add_argument("--add", metavar="DATA", help="add DATA's training images (new classes, or "
                   "more of the old) to the ridge head in --checkpoint (an earlier fit-head "
                   "output) from its saved statistics, without the old images")
    add_config_flags(p, SgdOptions, exclude=("seed",))
    add_common(p)
    p.set_defaults(func=cmd_fit_head)

    p = sub.add_parser("finetune", help="fine-tune a trained network on new data with separate "
                       "head and trunk learning rates")
    _data_flags(p)
    _cache_flags(p, "--head-init cache: cache root directory or an existing cache")
    p.add_argument("--out", required=True, type=out_dir, help="run directory")
    p.add_argument("--recipe", default=FINETUNE_RECIPE, choices=sorted(RECIPES),
                   help="the training defaults that flags override (default: %(default)s)")
    add_config_flags(p, TrainConfig, only=FINETUNE_CONFIG)
    add_config_flags(p, FinetuneOptions)
    add_overwrite(p)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    add_common(p)
    p.set_defaults(func=cmd_finetune)

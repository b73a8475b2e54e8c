"""`hfsnet train`, `evaluate`, `predict` and `models`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from hfsnet.cli.common import (
    add_common,
    add_overwrite,
    add_threads,
    emit,
    out_dir,
    parse_option,
    positive_int,
)
from hfsnet.cli.config_flags import add_config_flags, given_values
from hfsnet.data import DataError, data_spec, load_dataset, normalize, read_image_file, to_rgb
from hfsnet.interop.tblog import LOG_KINDS
from hfsnet.interop.training import prepare_run, train_config, train_with_log
from hfsnet.interop.user_models import model_from_checkpoint
from hfsnet.models import list_models
from hfsnet.textutil import printable
from hfsnet.train import TrainingInterrupted, TrainResult, resume
from hfsnet.train.checkpoint import Checkpoint, CheckpointError, CheckpointStore, load_checkpoint
from hfsnet.train.config import DEVICES, PRECISIONS, RECIPES, TrainConfig
from hfsnet.train.distributed import launch_torchrun
from hfsnet.train.evaluate import evaluate
from hfsnet.train.rundir import RunDirError
from hfsnet.train.runtime import resolve_device, resolve_precision
from hfsnet.train.tta import FlipAverage


def layer_names(text: str) -> list[str]:
    """``--share-layers a,b,c`` as a list of names."""
    return [name.strip() for name in text.split(",") if name.strip()]


def cmd_train(args: argparse.Namespace) -> int:
    if args.nproc is not None:
        return launch_torchrun(args.nproc, args.argv)
    try:
        result = _run_training(args)
    except TrainingInterrupted as stop:
        print(f"hfsnet: {stop}", file=sys.stderr)
        return stop.exit_code
    print(f"test accuracy {100 * result.test_acc:.2f}% (loss {result.test_loss:.4f}), "
          f"{result.params:,} params, {result.train_seconds:.1f}s training, "
          f"{result.images_per_second:,.0f} img/s; run saved to {result.out_dir}",
          file=sys.stderr if args.json else sys.stdout)
    payload = result.to_dict()
    payload.pop("history")
    emit(args, payload)
    return 0


def _run_training(args: argparse.Namespace) -> TrainResult:
    """A fresh run, or a resumed one (--resume DIR, or --resume auto with --out DIR)."""
    prepare_run(args.model, resume=args.resume, log=args.log)
    if args.overwrite and args.resume not in (None, "auto"):
        raise RunDirError("--overwrite starts a new run and --resume DIR continues one: pass "
                          "one of them")
    if args.resume == "auto":
        if CheckpointStore(args.out).newest_valid() is not None:
            return resume(args.out, progress=not args.quiet)
    elif args.resume:
        return resume(args.resume, progress=not args.quiet)
    flags = given_values(args, TrainConfig)
    if args.model_opt:
        flags["model_options"] = dict(args.model_opt)
    if flags.get("tta_flip") is False:
        # --no-tta-flip means no test-time augmentation, also on recipes that add translations.
        flags.setdefault("tta_translate", False)
    config = train_config(args.config, args.recipe, flags, share_layers=args.share_layers)
    return train_with_log(config, args.out, log=args.log, progress=not args.quiet,
                          overwrite=args.overwrite)


def _load_for_inference(path: str, user_model: str | None) -> tuple[Checkpoint, torch.nn.Module]:
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt, user_model)
    if len(ckpt.meta["classes"]) != model.num_classes:
        raise CheckpointError(f"{ckpt.path}: {len(ckpt.meta['classes'])} class names for a head "
                              f"with {model.num_classes} outputs")
    model.eval()
    return ckpt, model


def cmd_evaluate(args: argparse.Namespace) -> int:
    ckpt, model = _load_for_inference(args.checkpoint, args.model)
    meta = ckpt.meta
    data = load_dataset(data_spec(args.data), image_size=meta.get("config", {}).get("image_size"))
    if data.in_channels == 1 and meta["in_channels"] == 3:
        data = to_rgb(data)  # as `adapt` fed grayscale images to an RGB trunk
    if data.classes != meta["classes"]:
        raise DataError(f"--data: classes {data.classes} differ from the checkpoint's "
                        f"{meta['classes']} ({ckpt.path})")
    if list(data.image_size) != meta["image_size"] or data.in_channels != meta["in_channels"]:
        raise DataError(f"--data: images are {data.in_channels}x{data.image_size}, the "
                        f"checkpoint expects {meta['in_channels']}x{meta['image_size']}")
    device = resolve_device(args.device)
    trained = meta.get("config", {})
    # By default inference runs the way the model trained: the precision that ran (the fast
    # recipes': bf16 where it was faster) and channels-last memory.
    channels_last = bool(trained.get("channels_last", False))
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    precision = resolve_precision(args.precision or trained.get("precision", "fp32"), device,
                                  model, (data.in_channels, *data.image_size),
                                  channels_last=channels_last)
    if args.tta_flip or args.tta_translate:
        model = FlipAverage(model, translate=bool(args.tta_translate))
    result = evaluate(model, data.test, mean=tuple(meta["mean"]), std=tuple(meta["std"]),
                      batch_size=args.batch_size, device=device, precision=precision,
                      channels_last=channels_last)
    out = sys.stderr if args.json else sys.stdout
    print(f"test accuracy {100 * result.acc:.2f}%  loss {result.loss:.4f}  "
          f"({result.count} images)", file=out)
    for name, acc in zip(data.classes, result.per_class_acc, strict=True):
        print(f"  {printable(name):>16s} {100 * acc:6.2f}%", file=out)
    emit(args, {"test_acc": result.acc, "test_loss": result.loss, "count": result.count,
                 "per_class_acc": dict(zip(data.classes, result.per_class_acc, strict=True)),
                 "confusion": result.confusion, "classes": data.classes})
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    ckpt, model = _load_for_inference(args.checkpoint, args.model)
    meta = ckpt.meta
    size = tuple(meta["image_size"])
    images = torch.stack([read_image_file(p, meta["in_channels"], size) for p in args.images])
    with torch.no_grad():
        probs = model(normalize(images, meta["mean"], meta["std"])).softmax(1)
    k = _top_k(args.top_k, len(meta["classes"]))
    top_p, top_i = probs.topk(k, dim=1)
    predictions = []
    for path, ps, idx in zip(args.images, top_p.tolist(), top_i.tolist(), strict=True):
        top = [{"class": meta["classes"][i], "prob": p} for p, i in zip(ps, idx, strict=True)]
        predictions.append({"image": path, "top": top})
        if not args.json:
            print(printable(path) + ": " + ", ".join(
                f"{printable(t['class'])} {100 * t['prob']:.1f}%" for t in top))
    emit(args, {"predictions": predictions})
    return 0


def _top_k(requested: int, num_classes: int) -> int:
    """--top-k, clamped to the class count with a note: "the 5 best of 3" can only mean all."""
    if requested > num_classes:
        print(f"hfsnet: note: --top-k {requested} exceeds the model's {num_classes} classes; "
              f"showing all {num_classes}", file=sys.stderr)
        return num_classes
    return requested


def cmd_models(args: argparse.Namespace) -> int:
    entries = list_models()
    if not args.json:
        for e in entries:
            print(f"{e.name:16s} {e.description}")
    emit(args, {"models": [{"name": e.name, "description": e.description} for e in entries]})
    return 0


def _train_parser(sub: Any) -> None:
    p = sub.add_parser("train", help="train a model; writes config, metrics and a checkpoint")
    p.add_argument("--share-layers", type=layer_names, metavar="A,B,C",
                   help="layers of a module.path:factory network to fuse (see `hfsnet layers`)")
    p.add_argument("--config", metavar="FILE",
                   help="YAML, TOML or JSON of config keys (a run's config.json reproduces it); "
                        "flags override it")
    p.add_argument("--log", choices=LOG_KINDS, default="none",
                   help="tensorboard: also write TensorBoard logs to <out>/tensorboard")
    p.add_argument("--model-opt", action="append", type=parse_option, metavar="KEY=VALUE",
                   help="model constructor option, e.g. growth=16 (repeatable)")
    p.add_argument("--out", type=out_dir, default=Path("runs/latest"), help="run directory")
    p.add_argument("--recipe", choices=sorted(RECIPES),
                   help="named defaults (default: the config file's, else 'default'); "
                        "config files and explicit flags override them")
    p.add_argument("--resume", metavar="DIR|auto",
                   help="continue a run from its newest valid checkpoint (auto: the --out "
                        "directory if it holds one, else start fresh)")
    add_overwrite(p)
    p.add_argument("--nproc", type=int, metavar="N",
                   help="train with N processes (DistributedDataParallel) through torchrun")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    add_config_flags(p, TrainConfig)
    add_common(p)
    p.set_defaults(func=cmd_train)


def add_commands(sub: Any) -> None:
    """train, evaluate, predict, models."""
    _train_parser(sub)

    p = sub.add_parser("evaluate", help="test loss, accuracy, per-class accuracy, confusion")
    p.add_argument("--checkpoint", required=True, help="run directory or checkpoint file")
    p.add_argument("--model", metavar="MODULE:FACTORY",
                   help="the factory of a user network (its checkpoints never import code)")
    p.add_argument("--data", help="dataset spec; default $HFSNET_DATA")
    p.add_argument("--batch-size", type=positive_int, default=500)
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="default: the precision the checkpoint was trained in")
    p.add_argument("--tta-flip", action="store_true",
                   help="average each image with its mirror (as --recipe fast reports)")
    p.add_argument("--tta-translate", action="store_true",
                   help="also average 1 px shifts of each mirror pair (6 views)")
    add_threads(p)
    add_common(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="top-k classes for image files of any size")
    p.add_argument("--checkpoint", required=True, help="run directory or checkpoint file")
    p.add_argument("--model", metavar="MODULE:FACTORY",
                   help="the factory of a user network (its checkpoints never import code)")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--top-k", type=positive_int, default=3,
                   help="classes per image, best first (at most the model's class count)")
    add_threads(p)
    add_common(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("models", help="list the registered models")
    add_common(p)
    p.set_defaults(func=cmd_models)



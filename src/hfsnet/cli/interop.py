"""`hfsnet layers`, `hfsnet export` and `hfsnet runs`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from torch import nn

from hfsnet.analysis.summary import parse_input_shape
from hfsnet.cli.common import add_common, emit, out_file, parse_option
from hfsnet.interop.export import FORMATS, INPUT_KINDS, export_model
from hfsnet.interop.runs import COLUMNS, find_runs, format_table, sort_runs
from hfsnet.interop.user_models import (
    build_backbone,
    import_factory,
    is_user_spec,
    model_from_checkpoint,
)
from hfsnet.models import create_model
from hfsnet.models.share import tappable_layers
from hfsnet.train.checkpoint import load_checkpoint


def _network(name: str, shape: tuple[int, int, int], options: dict[str, Any]) -> nn.Module:
    """A registered model, or the bare network a user factory builds (before any sharing)."""
    if is_user_spec(name):
        return build_backbone(name, import_factory(name), options)
    return create_model(name, in_channels=shape[0], image_size=shape[1], **options)


def cmd_layers(args: argparse.Namespace) -> int:
    shape = parse_input_shape(args.input)
    network = _network(args.model, shape, dict(args.model_opt or []))
    modules = dict(network.named_modules())
    rows = [{"name": name, "type": type(modules[name]).__name__, "shape": list(out)}
            for name, out in tappable_layers(network, shape).items()]
    if not args.json:
        width = max((len(row["name"]) for row in rows), default=4)
        for row in rows:
            dims = "x".join(map(str, row["shape"]))
            print(f"{row['name']:<{width}s}  {row['type']:<20s} {dims}")
    emit(args, {"model": args.model, "input": list(shape), "layers": rows})
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    ckpt = load_checkpoint(args.checkpoint)
    model = model_from_checkpoint(ckpt, args.model)
    info = export_model(model, ckpt.meta, args.out, fmt=args.format, input_kind=args.input,
                        source=ckpt.path)
    dims = " x ".join(map(str, info["input_shape"]))
    print(f"exported {ckpt.path} as {args.format} to {args.out}: input images {info['input']} "
          f"N x {dims}, output logits N x {len(info['classes'])}",
          file=sys.stderr if args.json else sys.stdout)
    emit(args, {"out": str(args.out), "format": args.format, **info})
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    rows, skipped = find_runs(args.dir)
    rows = sort_runs(rows, args.sort, reverse=args.reverse)
    for line in skipped:
        print(f"hfsnet: skipped {line}", file=sys.stderr)
    if not args.json:
        print(format_table(rows) if rows else f"no runs under {args.dir}")
    emit(args, {"runs": [row.to_dict() for row in rows], "skipped": skipped})
    return 0


def add_commands(subparsers: Any) -> None:
    """Register `layers`, `export` and `runs`."""
    p = subparsers.add_parser("layers", help="layer names a network can share, with output "
                                             "shapes (for --share-layers)")
    p.add_argument("model", metavar="MODEL", help="registered model or module.path:factory")
    p.add_argument("--input", default="3x32x32", metavar="CxHxW", help="input image shape")
    p.add_argument("--model-opt", action="append", type=parse_option, metavar="KEY=VALUE",
                   help="constructor/factory option (repeatable)")
    add_common(p)
    p.set_defaults(func=cmd_layers)

    p = subparsers.add_parser("export", help="ONNX or TorchScript file taking raw images")
    p.add_argument("--checkpoint", required=True, help="run directory or checkpoint file")
    p.add_argument("--format", choices=FORMATS, default="onnx")
    p.add_argument("--out", type=out_file, required=True,
                   help="file to write (never the checkpoint or another file of a run)")
    p.add_argument("--input", choices=INPUT_KINDS, default="uint8",
                   help="uint8 pixels in [0, 255], or float32 in [0, 1]; N x C x H x W")
    p.add_argument("--model", metavar="MODULE:FACTORY",
                   help="the factory of a user network (needed for its checkpoints)")
    add_common(p)
    p.set_defaults(func=cmd_export)

    p = subparsers.add_parser("runs", help="table of the runs under a folder")
    p.add_argument("dir", metavar="DIR", help="folder searched recursively for run directories")
    p.add_argument("--sort", choices=COLUMNS, default="run", help="column to sort by")
    p.add_argument("--reverse", action="store_true", help="descending order")
    add_common(p)
    p.set_defaults(func=cmd_runs)

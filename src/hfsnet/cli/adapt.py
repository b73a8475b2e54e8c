"""`hfsnet adapt`: a pretrained trunk fitted to an image folder in one command."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from hfsnet.cli.common import add_common, add_threads, emit, out_dir, parse_option
from hfsnet.cli.config_flags import add_config_flags, flag_fields, given_values
from hfsnet.cli.transfer import FINETUNE_CONFIG
from hfsnet.data import data_spec
from hfsnet.train.config import FINETUNE_RECIPE, RECIPES, TrainConfig, resolve_config
from hfsnet.train.options import flag_of
from hfsnet.transfer.adapt import (
    AdaptError,
    AdaptOptions,
    AdaptResult,
    FinetuneStep,
    adapt,
)
from hfsnet.transfer.finetune import FinetuneOptions
from hfsnet.transfer.fit import HeadOptions

# The fine-tune's training flags: those of `hfsnet finetune`, less --val-split (adapt's data is
# loaded once, without a validation split).
ADAPT_FINETUNE_CONFIG = tuple(name for name in FINETUNE_CONFIG if name != "val_split")
FINETUNE_EXCLUDE = ("head_init",)  # adapt fine-tunes from the head it fitted


def _train_values(args: argparse.Namespace) -> dict[str, Any]:
    """The fine-tune's TrainConfig flags that were given (TrainConfig shares the names of
    --image-size, --seed and --device with adapt's own flags: those are not its)."""
    return {name: value for name, value in given_values(args, TrainConfig).items()
            if name in ADAPT_FINETUNE_CONFIG}


def _finetune_flags_given(args: argparse.Namespace) -> list[str]:
    """The fine-tune flags on the command line (they need --finetune)."""
    names = set(given_values(args, FinetuneOptions)) | set(_train_values(args))
    return [str(flag_of(f)) for cls in (FinetuneOptions, TrainConfig)
            for f in flag_fields(cls) if f.name in names]


def finetune_step(args: argparse.Namespace, seed: int) -> FinetuneStep | None:
    """The fine-tune --finetune asks for, from its flags; None without --finetune."""
    if not args.finetune:
        given = _finetune_flags_given(args)
        if given:
            raise AdaptError(f"{', '.join(given)}: fine-tuning flags; add --finetune, or drop "
                             "them")
        return None
    options = FinetuneOptions(**given_values(args, FinetuneOptions))
    # --head-lr is the config's lr: the trainer's schedule and records follow the head's rate
    config = resolve_config(args.recipe, **{**_train_values(args),
                                            "model": args.model, "data": data_spec(args.data),
                                            "lr": options.head_lr, "seed": seed})
    return FinetuneStep(config, options)


def adapt_options(args: argparse.Namespace) -> AdaptOptions:
    head = HeadOptions(**given_values(args, HeadOptions))
    return AdaptOptions(**given_values(args, AdaptOptions), head=head,
                        finetune=finetune_step(args, head.seed))


def summary_lines(result: AdaptResult) -> list[str]:
    """What the run gave and where the time went."""
    head = result.head
    cache = "built" if result.cache_built else "reused"
    lines = [f"{head['method']} head on {head['width']}-wide descriptors of stages "
             f"{head['levels']} ({head['pool']}) over {result.train_images} training images: "
             f"test accuracy {100 * result.test_acc:.2f}% on {result.test_images} images, "
             f"{result.params:,} params; saved to {result.out_dir}"]
    if result.finetune is not None:
        ft = result.finetune
        lines.append(f"fine-tuned {ft['epochs']} epochs: test accuracy "
                     f"{100 * ft['test_acc']:.2f}%, {ft['seconds']:.1f}s; saved to "
                     f"{ft['out_dir']}")
    finetune = f", fine-tune {result.finetune['seconds']:.1f}s" if result.finetune else ""
    lines.append(f"time: feature pass {result.feature_seconds:.1f}s (cache {cache}), fit "
                 f"{result.fit_seconds:.2f}s, evaluation {result.eval_seconds:.1f}s{finetune}, "
                 f"total {result.total_seconds:.1f}s")
    return lines


def cmd_adapt(args: argparse.Namespace) -> int:
    options = adapt_options(args)
    result = adapt(args.model, data_spec(args.data), args.out, options,
                   model_options=dict(args.model_opt or []), progress=not args.quiet)
    out = sys.stderr if args.json else sys.stdout
    for line in summary_lines(result):
        print(line, file=out)
    emit(args, result.to_dict())
    return 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser("adapt", help="fit a pretrained network to an image folder: feature "
                       "cache, head fit, evaluation and a complete checkpoint in one command")
    p.add_argument("--model", required=True, help="a registered pretrained model, e.g. "
                   "efficientnet-lite0")
    p.add_argument("--model-opt", action="append", type=parse_option, metavar="KEY=VALUE",
                   help="model option, e.g. taps=stages (repeatable); options left unset "
                   "take the model's defaults for adapting")
    p.add_argument("--data", help="dataset spec; default $HFSNET_DATA")
    p.add_argument("--out", required=True, type=out_dir, help="run directory")
    add_config_flags(p, AdaptOptions)
    add_config_flags(p, HeadOptions)
    p.add_argument("--finetune", action="store_true",
                   help="then fine-tune trunk and head with two learning rates into <out>/"
                        "finetune (flags below)")
    p.add_argument("--recipe", default=FINETUNE_RECIPE, choices=sorted(RECIPES),
                   help="--finetune: the training defaults that flags override (default: "
                   "%(default)s)")
    add_config_flags(p, TrainConfig, only=ADAPT_FINETUNE_CONFIG)
    add_config_flags(p, FinetuneOptions, exclude=FINETUNE_EXCLUDE)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    add_threads(p)
    add_common(p)
    p.set_defaults(func=cmd_adapt)

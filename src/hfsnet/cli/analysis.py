"""`hfsnet summary` (per-layer accounting) and `hfsnet compare` (train, measure, report)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from hfsnet.analysis.browser import check_page, screenshot
from hfsnet.analysis.compare import CompareError, CompareSpec, run_compare
from hfsnet.analysis.memory import StepSpec, measure_peak_memory
from hfsnet.analysis.report import REPORT_HTML, write_report
from hfsnet.analysis.summary import SummaryError, parse_input_shape, summarize
from hfsnet.analysis.summary_table import render_summary
from hfsnet.cli.common import add_common, emit, parse_option, positive_int
from hfsnet.data import data_spec
from hfsnet.models import create_model
from hfsnet.train.config import CONCRETE_PRECISIONS, DEVICES, OPTIMIZERS, RECIPES

SCREENSHOT = "report.png"


def cmd_summary(args: argparse.Namespace) -> int:
    c, h, w = parse_input_shape(args.input)
    if h != w:
        raise SummaryError(f"--input: models take square images, got {h}x{w}")
    options = {"image_size": h, **dict(args.model_opt or [])}
    model = create_model(args.model, num_classes=args.num_classes, in_channels=c, **options)
    summary = summarize(model, (c, h, w), batch_size=args.batch_size, precision=args.precision)
    if args.memory:
        peak = measure_peak_memory(StepSpec(
            model=args.model, model_options=options, num_classes=args.num_classes,
            input_shape=(c, h, w), batch_size=args.batch_size, precision=args.precision,
            optimizer=args.optimizer, lr=1e-3, device=args.device))
        summary.peak_memory = peak.to_dict()
    if not args.json:
        print(render_summary(summary, max_depth=args.depth))
    emit(args, summary.to_dict())
    return 0


def _model_list(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _model_option(text: str) -> tuple[str, str, Any]:
    model, sep, rest = text.partition(":")
    if not sep or not model:
        raise argparse.ArgumentTypeError(f"expected MODEL:KEY=VALUE, got {text!r}")
    key, value = parse_option(rest)
    return model, key, value


def _per_model(options: list[tuple[str, str, Any]] | None) -> dict[str, dict[str, Any]]:
    grouped: dict[str, dict[str, Any]] = {}
    for model, key, value in options or []:
        grouped.setdefault(model, {})[key] = value
    return grouped


def _save_screenshot(out: Path, log: Any) -> None:
    html = out / REPORT_HTML
    page = check_page(html)
    if page.images_loaded != page.images_total:
        raise CompareError(f"{html}: only {page.images_loaded} of {page.images_total} images "
                           "rendered in Chromium")
    screenshot(html, out / SCREENSHOT, height=page.height)
    log(f"{html} renders in Chromium ({page.images_total} images); screenshot "
        f"{out / SCREENSHOT}")


def cmd_compare(args: argparse.Namespace) -> int:
    spec = CompareSpec(models=_model_list(args.models), data=data_spec(args.data),
                       recipe=args.recipe, seeds=args.seeds, out=args.out, epochs=args.epochs,
                       overrides=dict(args.set or []), model_options=_per_model(args.model_opt),
                       baseline=args.baseline, jobs=args.jobs)
    stream = sys.stderr if args.json else sys.stdout

    def log(message: str) -> None:
        print(message, file=stream, flush=True)

    payload = write_report(run_compare(spec, progress=not args.quiet, log=log), spec.out)
    log(f"report: {spec.out / 'report.md'} and {spec.out / REPORT_HTML}")
    for v in payload["verdicts"]:
        log(f"  {v['claim']:18s} {v['model']:>16s}: {v['status']:13s} {v['evidence']}")
    if args.screenshot:
        _save_screenshot(spec.out, log)
    emit(args, {"out": str(spec.out), "verdicts": payload["verdicts"],
                "models": [{"name": m["name"], "totals": m["totals"],
                            "peak_memory": m["peak_memory"], "aggregate": m["aggregate"]}
                           for m in payload["models"]]})
    return 0


def _summary_parser(sub: Any) -> None:
    p = sub.add_parser("summary", help="per-layer parameters, MACs/FLOPs, activation memory, "
                                       "and the measured peak memory of a training step")
    p.add_argument("model", help="registered model name (see `hfsnet models`)")
    p.add_argument("--input", default="3x32x32", help="input shape CxHxW (default 3x32x32)")
    p.add_argument("--batch-size", type=positive_int, default=32,
                   help="batch for activation and peak memory (default 32)")
    p.add_argument("--precision", choices=CONCRETE_PRECISIONS, default="fp32",
                   help="bf16: activations and the measured step under bf16 autocast")
    p.add_argument("--num-classes", type=positive_int, default=10)
    p.add_argument("--model-opt", action="append", type=parse_option, metavar="KEY=VALUE",
                   help="model constructor option, e.g. norm=true (repeatable)")
    p.add_argument("--depth", type=positive_int, help="show nested modules down to this depth")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw",
                   help="optimizer of the measured training step (its state counts)")
    p.add_argument("--device", choices=DEVICES, default="cpu",
                   help="where the training step is measured")
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                   help="measure the peak memory of a training step in a child process")
    add_common(p)
    p.set_defaults(func=cmd_summary)


def _compare_parser(sub: Any) -> None:
    p = sub.add_parser("compare", help="train models on the same data, recipe and seeds; "
                                       "write a report with plots and verdicts on the seed's "
                                       "claims")
    p.add_argument("--models", required=True, help="comma-separated model names")
    p.add_argument("--data", help="dataset spec; default $HFSNET_DATA")
    p.add_argument("--recipe", default="default", choices=sorted(RECIPES))
    p.add_argument("--seeds", type=int, default=1, help="seeds per model: 0..SEEDS-1")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs trained at once, each in its own process with cores/JOBS threads "
                        "(default 1)")
    p.add_argument("--out", type=Path, required=True,
                   help="directory for runs/, plots/, compare.json and the reports")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs (reported)")
    p.add_argument("--set", action="append", type=parse_option, metavar="KEY=VALUE",
                   help="override a training-config field for every run, e.g. "
                        "schedule=cosine (repeatable)")
    p.add_argument("--model-opt", action="append", type=_model_option,
                   metavar="MODEL:KEY=VALUE", help="constructor option for one model, e.g. "
                   "hfs-seed:norm=true (repeatable)")
    p.add_argument("--baseline", help="the model without feature sharing (default: the first)")
    p.add_argument("--screenshot", action="store_true",
                   help=f"check report.html in headless Chromium and save {SCREENSHOT}")
    p.add_argument("--quiet", action="store_true", help="no per-batch progress")
    add_common(p)
    p.set_defaults(func=cmd_compare)


def add_commands(subparsers: Any) -> None:
    _summary_parser(subparsers)
    _compare_parser(subparsers)

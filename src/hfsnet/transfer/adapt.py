"""``adapt``: a pretrained registry trunk fitted to an image folder in one call.

Load the data, build the trunk with its pretrained weights, cache its pooled multi-level
descriptors of every image, fit a head on them (ridge by default), evaluate the saved model on the
test split and write a complete checkpoint: ``hfsnet predict``, ``evaluate`` and ``export`` read
it like any other. Optionally fine-tune from there with two learning rates.

How the data is prepared for the trunk, each step announced as a note:

- The trunk resizes its inputs itself (its ``image_size`` option), by default to the data's own
  side or, for smaller images, the model's ``adapt_min_side``; the images are stored at their
  native size. A folder of mixed sizes is resized on loading to ``--image-size``, else to the
  model's default input side.
- Grayscale images are replicated to 3 channels for an RGB trunk; RGBA images lose their alpha in
  the decoder (the colour under every pixel is kept).
- Normalisation is the trunk's (``model.preprocessing``), never the new data's statistics.
- A dataset with one class is refused (a classifier needs two). A class with a single training
  image is fitted anyway, with a note: its head row rests on that one example.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from hfsnet.data import DataSplits, MixedSizesError, load_dataset, to_rgb
from hfsnet.errors import HfsnetError
from hfsnet.fsutil import atomic_write_bytes
from hfsnet.models import FeatureClassifier, create_model
from hfsnet.models.base import count_params
from hfsnet.models.errors import ModelOptionError
from hfsnet.models.level_head import install_head
from hfsnet.models.registry import get_entry, parse_options
from hfsnet.train.checkpoint import CHECKPOINT_NAME, data_meta, save_checkpoint
from hfsnet.train.config import IMAGE_SIZES, TrainConfig
from hfsnet.train.options import at_least, option, validate_fields
from hfsnet.train.rundir import RunLock, check_unlocked, refuse_existing_run, remove_run, run_files
from hfsnet.train.runtime import seed_everything
from hfsnet.transfer.finetune import FinetuneOptions, check_frozen_levels, finetune
from hfsnet.transfer.fit import HeadOptions, cache_for, fit_cached_head, score_descriptors
from hfsnet.transfer.source import Source, for_trunk
from hfsnet.transfer.subsets import few_shot, parse_classes, select_classes

FINETUNE_DIR = "finetune"  # the fine-tuned run, a run directory of its own inside --out
CACHE_DIR = "feature-cache"  # the default feature cache root, inside --out

Note = Callable[[str], None]


class AdaptError(HfsnetError):
    """Data or options adapt cannot work with; the message names the flag or file."""


def print_note(text: str) -> None:
    print(f"hfsnet: note: {text}", file=sys.stderr)


@dataclass
class FinetuneStep:
    """The fine-tune after the head fit: its training config and its two-rate options."""

    config: TrainConfig
    options: FinetuneOptions = field(default_factory=FinetuneOptions)


@dataclass
class AdaptOptions:
    """What to adapt to and how; ``head`` fits the head, ``finetune`` (None: none) continues."""

    image_size: int | None = option(None, check=IMAGE_SIZES, metavar="N",
                                    help="side the trunk resizes its inputs to (default: the "
                                    "data's own, raised to the model's smallest adapting "
                                    "side if smaller)")
    classes: str | None = option(None, metavar="A,B,C",
                                 help="comma-separated class names to keep (relabelled in order)")
    per_class: int | None = option(None, check=at_least(1), metavar="N",
                                   help="training images per class, drawn by --seed")
    cache: str | None = option(None, metavar="DIR",
                               help=f"feature cache root (default: <out>/{CACHE_DIR})")
    overwrite: bool = option(False, help="replace the run already in --out (removed only when "
                             "the new one is saved)")
    head: HeadOptions = field(default_factory=HeadOptions)
    finetune: FinetuneStep | None = None

    def validate(self) -> None:
        validate_fields(self, AdaptError)
        self.head.validate()
        if self.finetune is not None:
            self.finetune.config.validate()
            self.finetune.options.validate(self.finetune.config)
            if self.finetune.options.head_init != "auto":
                raise AdaptError(f"--head-init {self.finetune.options.head_init}: adapt "
                                 "fine-tunes from the head it fitted (head_init auto)")


@dataclass
class AdaptResult:
    """What adapting produced and what each part cost (seconds of wall time)."""

    out_dir: str
    model: str
    classes: list[str]
    test_acc: float  # of the saved model, as `hfsnet evaluate` computes it
    test_loss: float
    params: int
    input_side: int  # the side the trunk resizes inputs to
    train_images: int
    test_images: int
    feature_seconds: float  # finding or building the feature cache
    fit_seconds: float
    eval_seconds: float
    total_seconds: float
    cache_path: str
    cache_built: bool
    head: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    finetune: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_target_data(spec: str, options: AdaptOptions, default_side: int | None,
                     note: Note) -> tuple[DataSplits, int | None]:
    """``spec`` at its native size (or, mixed sizes, resized), then ``--classes`` and
    ``--per-class``; and the side it was resized to on loading (None: native)."""
    seed = options.head.seed
    with warnings.catch_warnings():
        # Refused below with a message of its own.
        warnings.filterwarnings("ignore", message=".*only one class")
        try:
            data, load_side = load_dataset(spec, seed=seed), None
        except MixedSizesError:
            load_side = options.image_size or default_side
            if load_side is None:
                raise AdaptError(f"--data {spec}: images differ in size; pass --image-size N "
                                 "to resize them all to N x N") from None
            note(f"--data {spec}: images differ in size; every image is resized to "
                 f"{load_side}x{load_side} px, the model's input side")
            data = load_dataset(spec, seed=seed, image_size=load_side)
    if options.classes:
        data = select_classes(data, parse_classes(options.classes))
    if options.per_class is not None:
        data = few_shot(data, options.per_class, seed)
    check_classes(spec, data, note)
    return data, load_side


def check_classes(spec: str, data: DataSplits, note: Note) -> None:
    """Two or more classes; a class with one training image only earns a note."""
    if data.num_classes < 2:
        raise AdaptError(f"--data {spec}: only one class ({data.classes[0]!r}); a classifier "
                         "needs two or more class folders under train/ and test/")
    counts = torch.bincount(data.train.labels, minlength=data.num_classes).tolist()
    single = [name for name, count in zip(data.classes, counts, strict=True) if count == 1]
    if single:
        note(f"--data {spec}: class(es) {single} have a single training image; the head is "
             "fitted anyway, but what it learns of them rests on that one example")


def default_input_side(name: str, model_options: dict[str, Any]) -> int | None:
    """The model's own ``image_size`` (its native input side), if it has that option."""
    return getattr(parse_options(get_entry(name), model_options), "image_size", None)


def input_side(name: str, options: AdaptOptions, data_side: int, note: Note) -> int:
    """``--image-size``, else the data's side raised to the model's ``adapt_min_side``."""
    least = get_entry(name).options.adapt_min_side
    if options.image_size is not None or least is None or data_side >= least:
        return options.image_size or data_side
    note(f"input side: the data's {data_side} px images are upsampled to {least} px by the "
         f"trunk, the smallest side {name} adapts at unless --image-size says otherwise")
    return least


def build_trunk(name: str, model_options: dict[str, Any], num_classes: int, side: int,
                side_given: bool) -> FeatureClassifier:
    """The registry model ``name`` with its pretrained weights, resizing inputs to ``side``;
    its ``adapt_defaults`` fill the options the user did not set."""
    defaults = get_entry(name).options.adapt_defaults
    try:
        return create_model(name, num_classes=num_classes, in_channels=3,
                            **{**defaults, **model_options, "image_size": side})
    except ModelOptionError as err:
        if side_given:
            raise
        raise AdaptError(f"{err} (the input side defaults to the data's {side} px; pass "
                         "--image-size N to upsample)") from None


def weights_in_checkpoint(model: FeatureClassifier) -> None:
    """Record the trunk as rebuilt without its pretrained weights file: the checkpoint holds
    every weight, so predict, evaluate and export need no weights package or file."""
    options = model.model_options.get("trunk_options")
    if not isinstance(options, dict):
        return
    trunk_fields = {f.name for f in dataclasses.fields(get_entry(
        model.model_options["trunk"]).options)}
    if "pretrained" in trunk_fields:
        options["pretrained"] = False
        options.pop("weights", None)


def prepare_data(source: Source, data: DataSplits, note: Note) -> DataSplits:
    """``data`` in the trunk's channels and normalisation."""
    if data.in_channels == 1 and source.in_channels == 3:
        note("grayscale images: replicated to 3 channels for the RGB trunk")
        data = to_rgb(data)
    return for_trunk(source, data)


def adapt(model: str, data: str, out_dir: str | Path, options: AdaptOptions | None = None, *,
          model_options: dict[str, Any] | None = None, note: Note = print_note,
          progress: bool = True) -> AdaptResult:
    """Adapt the pretrained registry model ``model`` to the dataset ``data``; the run goes to
    ``out_dir`` (refused if it holds a run, unless ``options.overwrite``)."""
    start = time.perf_counter()
    options = options or AdaptOptions()
    options.validate()
    out = Path(out_dir)
    check_unlocked(out)
    if not options.overwrite:
        refuse_existing_run(out)
    model_options = dict(model_options or {})
    if "image_size" in model_options:
        raise AdaptError("--model-opt image_size: the input side is --image-size (default: the "
                         "data's own, or the model's smallest adapting side)")
    seed_everything(options.head.seed)
    notes: list[str] = []

    def noted(text: str) -> None:
        notes.append(text)
        note(text)

    with RunLock(out):
        target, load_side = load_target_data(data, options, default_input_side(
            model, model_options), noted)
        side = input_side(model, options, load_side or max(target.image_size), noted)
        trunk = build_trunk(model, model_options, target.num_classes, side,
                            options.image_size is not None)
        if options.finetune is not None:  # refused before the feature pass, not after it
            check_frozen_levels(trunk, options.finetune.options.frozen_levels)
        source = Source.pretrained(trunk)
        target = prepare_data(source, target, noted)
        cache_root = Path(options.cache) if options.cache else out / CACHE_DIR
        note(f"feature pass: {model} at {side} px over {len(target.train)} train and "
             f"{len(target.test)} test images (cache under {cache_root})")
        found = cache_for(trunk, target, cache_root, options.head, progress=progress)
        fit_start = time.perf_counter()
        head, details = fit_cached_head(found.cache, trunk.stage_channels(), options.head)
        fit_seconds = time.perf_counter() - fit_start
        install_head(trunk, head)
        weights_in_checkpoint(trunk)
        eval_start = time.perf_counter()
        # The cache already holds the test descriptors: scoring them saves a second trunk pass
        # (28 s of 80 s on EuroSAT at 100/class, benchmarks/adapt.py); `hfsnet evaluate` reruns
        # the trunk and agrees up to the float16 rounding of the cache.
        test = score_descriptors(head, found.cache.features("test"), found.cache.labels("test"),
                                 target.num_classes)
        eval_seconds = time.perf_counter() - eval_start
        head_record = {"method": options.head.method, "levels": head.levels, "pool": head.pool,
                       "width": found.cache.width, **details}
        run = run_config(model, data, trunk, load_side, side, options)
        meta = save_model(out, trunk, target, run, head_record, source.origin,
                          options.overwrite)
        result = AdaptResult(
            str(out), model, target.classes, test.acc, test.loss, count_params(trunk), side,
            len(target.train), len(target.test), found.seconds, fit_seconds, eval_seconds, 0.0,
            str(found.cache.path), found.built, head_record, notes)
        if options.finetune is not None:
            result.finetune = run_finetune(Source(trunk, meta, None, f"{out} (fitted head)"),
                                           target, out, options.finetune, progress)
        result.total_seconds = time.perf_counter() - start
        write_result(out, result)
    return result


def run_config(model: str, data: str, trunk: FeatureClassifier, load_side: int | None,
               side: int, options: AdaptOptions) -> dict[str, Any]:
    """config.json: how the run was made, with the keys `hfsnet runs` reads (``model``,
    ``recipe``, ``epochs``)."""
    return {"model": model, "recipe": "adapt", "epochs": 0, "data": data,
            "image_size": load_side, "input_side": side, "model_options": trunk.model_options,
            "classes": options.classes, "per_class": options.per_class,
            "seed": options.head.seed, "head": asdict(options.head)}


def checkpoint_config(trunk: FeatureClassifier, data: str, load_side: int | None,
                      seed: int) -> dict[str, Any]:
    """The training config a checkpoint carries: what evaluate and finetune read from it
    (``image_size``: the side images were resized to on loading; fp32, contiguous memory)."""
    config = TrainConfig(model=trunk.model_name, model_options=trunk.model_options, data=data,
                         image_size=load_side, seed=seed, precision="fp32",
                         channels_last=False)
    config.validate()
    return config.to_dict()


def save_model(out: Path, model: FeatureClassifier, data: DataSplits, run: dict[str, Any],
               head: dict[str, Any], origin: str, overwrite: bool) -> dict[str, Any]:
    """checkpoint.safetensors and config.json (``run``) in ``out``, replacing an earlier run's
    files (a fine-tuned run inside it too) when ``overwrite``; returns the checkpoint's
    metadata."""
    if overwrite:
        remove_run(out, [*run_files(out), FINETUNE_DIR])
    config = checkpoint_config(model, run["data"], run["image_size"], run["seed"])
    meta = {**data_meta(data), "config": config, "epoch": 0, "history": [],
            "head_fit": {**head, "source": origin}, "adapt": run}
    save_checkpoint(out / CHECKPOINT_NAME, model, meta)
    atomic_write_bytes(out / "config.json", json.dumps(run, indent=2).encode())
    return meta


def write_result(out: Path, result: AdaptResult) -> None:
    """result.json, with the keys `hfsnet runs` reads (``epochs``, ``train_seconds``) too."""
    payload = {**result.to_dict(), "epochs": 0, "train_seconds": result.total_seconds}
    atomic_write_bytes(out / "result.json", json.dumps(payload, indent=2).encode())


def run_finetune(source: Source, data: DataSplits, out: Path, step: FinetuneStep,
                 progress: bool) -> dict[str, Any]:
    """Fine-tune ``source.model`` (the fitted head kept) into ``out/finetune``."""
    start = time.perf_counter()
    trained = finetune(source, data, step.config, out / FINETUNE_DIR, step.options,
                       progress=progress)
    return {"out_dir": trained.out_dir, "test_acc": trained.test_acc,
            "test_loss": trained.test_loss, "epochs": trained.epochs,
            "train_seconds": trained.train_seconds, "seconds": time.perf_counter() - start}

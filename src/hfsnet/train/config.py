"""Typed training configuration, named recipes, and their JSON round trip."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any

from hfsnet.errors import HfsnetError
from hfsnet.train.options import (
    FRACTION,
    SEEDS,
    Range,
    above,
    at_least,
    option,
    validate_fields,
)

OPTIMIZERS = ("sgd", "adam", "adamw", "muon")
SCHEDULES = ("constant", "cosine", "onecycle")
CONCRETE_PRECISIONS = ("fp32", "bf16")  # what runs; "auto" picks one (runtime.resolve_precision)
PRECISIONS = ("auto", *CONCRETE_PRECISIONS)
DEVICES = ("auto", "cpu", "cuda")
NONFINITE = ("stop", "skip")


class ConfigError(HfsnetError):
    """A configuration value out of range; the message names the flag."""


# No lower bound suits every model (the hfs-air nets need 9 px, seed-cnn is built for one size):
# these refuse typos like --image-size 1 or 32000, the model itself refuses the rest.
IMAGE_SIZES = Range(8, 4096)


@dataclass
class TrainConfig:
    """Everything that decides a training run. Saved in every run directory and checkpoint.

    Each field's ``option`` gives its flag of ``hfsnet train``, help text and accepted values.
    """

    model: str = option("hfs-seed", help="registered model name (see `hfsnet models`), or "
                        "module.path:factory for your own network (with --share-layers)")
    # --model-opt fills it; option() is a dataclasses.field
    model_options: dict[str, Any] = option(default_factory=dict, flag=False)  # noqa: RUF009
    data: str = option("", help="dataset spec; default $HFSNET_DATA")
    val_split: float = option(0.0, check=FRACTION,
                              help="fraction of train held out, fixed seed")
    limit_train: int | None = option(None, check=at_least(1), metavar="N",
                                     help="stratified subset of N training images")
    image_size: int | None = option(None, check=IMAGE_SIZES, metavar="SIZE",
                                    help="resize images to SIZE x SIZE (8 to 4096)")
    skip_bad: bool = option(False, help="skip unreadable image files (reported) instead of "
                            "failing")
    recipe: str = option("default", flag=False)  # its own flag: it picks the defaults
    epochs: int = option(3, check=at_least(1), help="passes over the training set")
    batch_size: int = option(64, check=at_least(1), help="images per optimizer step")
    eval_batch_size: int = option(500, check=at_least(1), flag=False)
    optimizer: str = option("adamw", choices=OPTIMIZERS)
    # lr and crops tuned for the short default run (hfs-seed, 3 epochs): on a 10k-image proxy
    # no crops and lr 4e-3 gave 45.6% vs 36.9% for 4 px crops and 2e-3 (longer recipes add crops).
    lr: float = option(4e-3, check=above(0), help="peak learning rate")
    momentum: float = option(0.9, check=FRACTION, help="SGD momentum (Nesterov)")
    weight_decay: float = option(5e-4, check=at_least(0), help="not applied to norms and biases")
    schedule: str = option("onecycle", choices=SCHEDULES)
    warmup_fraction: float = option(0.15, check=FRACTION, metavar="F",
                                    help="share of the steps the schedule warms up over")
    label_smoothing: float = option(0.0, check=FRACTION)
    crop_padding: int = option(0, check=at_least(0), help="random-crop padding in px (0: off)")
    flip: bool = option(True, help="random horizontal flips")
    cutout: int = option(0, check=at_least(0), help="cutout square side in px (0: off)")
    seed: int = option(0, check=SEEDS, help="every random draw of the run follows from it")
    device: str = option("auto", choices=DEVICES)
    precision: str = option("auto", choices=PRECISIONS, help="bf16 autocasts on CPU too; auto: "
                            "bf16 where the model's own step, timed before the run, is 1.1x "
                            "fp32's speed or more; with --deterministic: bf16 where the CPU "
                            "has bf16 instructions (checkpoints record the precision that ran)")
    channels_last: bool = option(True, help="NHWC memory layout (faster convolutions on CPU "
                                 "and GPU)")
    # evaluate the test set after every epoch (for learning curves)
    track_test: bool = option(True, flag=False)
    checkpoint_every: int = option(0, check=at_least(0), metavar="STEPS",
                                   help="also checkpoint every STEPS optimizer steps (default: "
                                   "epoch ends)")
    keep_last: int = option(2, check=at_least(1), metavar="K",
                            help="step checkpoints kept in <run>/checkpoints (default 2)")
    nonfinite: str = option("stop", choices=NONFINITE,
                            help="on a NaN/Inf loss or gradient: stop (default) or skip the step")
    deterministic: bool = option(False, help="deterministic algorithms and an untimed "
                                 "--precision auto: one command, one result, bit-exact resume "
                                 "(on the CPU)")
    sync_bn: bool = option(False, help="with several processes: batch-norm statistics over the "
                           "global batch")
    ema_decay: float = option(0.0, check=FRACTION, metavar="D",
                              help="evaluate a moving average of the weights (0: off)")
    tta_flip: bool = option(False, help="evaluation averages each image with its mirror "
                            "(--no-tta-flip also turns off the translations)")
    tta_translate: bool = option(False, help="with --tta-flip: also average copies shifted by "
                                 "1 px (6 views, x2 the cost)")
    # Nets whose norm scales are frozen (hfs-air) train the shifts much faster than the weights
    # (airbench: 64x).
    norm_lr_scale: float = option(1.0, check=above(0), metavar="S",
                                  help="learning-rate multiplier of norm shifts and biases")
    # Zhang et al. 2019; airbench's cubic schedule.
    lookahead_every: int = option(0, check=at_least(0), metavar="N",
                                  help="lookahead: every N steps, pull the weights to a slow "
                                  "average and restart from it (0: off)")
    # Derandomised flips (airbench): each epoch sees the view the previous one did not.
    alternate_flips: bool = option(False, help="mirror each image in alternate epochs, from a "
                                   "random start, instead of at random")
    # Muon's update is orthogonalised, so its rate is absolute, unlike the SGD rates in
    # mean-loss units: by default it follows --lr (hfsnet.train.muon.MUON_LR_RATIO).
    muon_lr: float | None = option(None, check=above(0), metavar="LR",
                                   help="with --optimizer muon: the filters' learning rate "
                                   "(default: --lr x 0.16)")
    muon_momentum: float | None = option(None, check=FRACTION, metavar="M",
                                         help="with --optimizer muon: the filters' Nesterov "
                                         "momentum (default: --momentum)")
    muon_steps: int = option(5, check=Range(1, 20), metavar="N",
                             help="with --optimizer muon: Newton-Schulz iterations per step")
    muon_normalize: bool = option(False, help="with --optimizer muon: rescale each filter bank "
                                  "to norm sqrt(out channels) before its step (for convs that "
                                  "a norm layer follows)")
    decay_norms: bool = option(False, help="also decay norm shifts and biases, by the same "
                               "fraction per step as the weights")
    whiten_bias_epochs: int = option(0, check=at_least(0), metavar="N",
                                     help="train the whitening stem's bias (model option "
                                     "whiten_bias) for the first N epochs, then freeze it "
                                     "(0: never frozen)")
    # Progressive resizing (fast.ai's DAWNBench runs): early epochs on smaller images cost
    # about scale^2 of a full-size epoch's convolutions; the last epochs at full size adapt the
    # net (and its norm statistics) to the size it is tested at.
    # A fraction, not a count, so that a recipe's setting holds at any --epochs.
    lowres_fraction: float = option(0.0, check=Range(0, 1, high_closed=False), metavar="F",
                                    help="train the first F of the epochs (rounded down) on "
                                    "images downscaled by --lowres-scale (progressive "
                                    "resizing; 0: off)")
    lowres_scale: float = option(0.75, check=Range(0.25, 1, high_closed=False),
                                 metavar="F",
                                 help="with --lowres-fraction: side of the downscaled images, "
                                 "as a fraction of the full size")
    threads: int = option(0, check=at_least(0), metavar="N",
                          help="torch threads per process (default: one per core; 1 is faster "
                          "when other jobs load the machine)")

    def validate(self) -> None:
        validate_fields(self, ConfigError)
        if self.optimizer == "sgd" and self.momentum == 0:
            raise ConfigError("--momentum must be > 0 with --optimizer sgd (Nesterov momentum), "
                              f"got {self.momentum!r}")
        if self.tta_translate and not self.tta_flip:
            raise ConfigError("--tta-translate averages shifted mirror pairs: it needs --tta-flip "
                              "(or add --no-tta-translate)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def lowres_epochs(self) -> int:
        """How many of the first epochs train downscaled: --lowres-fraction of --epochs, rounded
        down (the epsilon keeps 0.29 x 100 at 29)."""
        return int(self.lowres_fraction * self.epochs + 1e-9)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a plain dict, rejecting unknown keys and values of the wrong type."""
        return cls(**checked_fields(cls, _upgraded(values)))


def _upgraded(values: dict[str, Any]) -> dict[str, Any]:
    """A config saved before ``lowres_fraction`` (commits 954de0b-7431a32 saved
    ``lowres_epochs: N``) as ``lowres_fraction = N / epochs``: the same epochs train small, so
    those checkpoints still load and resume exactly. A value that is not a count of epochs is
    left for :func:`checked_fields` to name."""
    count, epochs = values.get("lowres_epochs"), values.get("epochs", TrainConfig.epochs)
    counts = all(isinstance(v, int) and not isinstance(v, bool) for v in (count, epochs))
    if not counts or epochs < 1 or "lowres_fraction" in values:
        return values
    upgraded = {key: value for key, value in values.items() if key != "lowres_epochs"}
    return {**upgraded, "lowres_fraction": count / epochs}


def _accepts(hint: Any, value: Any) -> bool:
    """Whether ``value`` fits a resolved field type like ``int | None``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(arg, value) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is not None:
        return isinstance(value, origin)
    return isinstance(value, hint)


def checked_fields(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` restricted to ``cls``'s fields; raises ConfigError naming a bad key."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    out = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"unknown config key {key!r} (valid keys: {', '.join(fields)})")
        if not _accepts(hints[key], value):
            raise ConfigError(f"config key {key!r}: expected {hints[key]}, got {value!r}")
        out[key] = value
    return out


# Each recipe overrides TrainConfig's defaults; explicit command-line flags override a recipe.
RECIPES: dict[str, dict[str, Any]] = {
    "default": {},
    # The design note's Keras run: Adam lr 0.0002, batch 32, 20 epochs, no augmentation, a 10%
    # validation split, fp32, no weight decay, constant learning rate.
    "seed": {
        "optimizer": "adam",
        "lr": 2e-4,
        "batch_size": 32,
        "epochs": 20,
        "crop_padding": 0,
        "flip": False,
        "val_split": 0.1,
        "weight_decay": 0.0,
        "schedule": "constant",
        "precision": "fp32",
        "channels_last": False,
    },
    # Fine-tuning a pretrained trunk (`hfsnet finetune`, `hfsnet adapt --finetune`): the recipe
    # benchmarks/adapt.py pins, at the length it found worth paying for. EfficientNet-Lite0 from
    # its ridge head, two rates, 100 images per class, quiet AVX2 EPYC: 15 epochs reached
    # EuroSAT 95.19%, CIFAR-10 60.16%, Fashion-MNIST 83.95% (3 seeds) where 5 stopped at 93.88,
    # 56.96 and 81.57%; 30 epochs added 0.2-1.4 points for twice the time (one seed;
    # results/adapt-blocks-epyc-avx2.json, adapt-epyc-quiet.json).
    # No test pass after every epoch, only the final one: on EuroSAT's 2,700 test images the
    # per-epoch passes took 59 of `adapt --finetune`'s 145 s (the README's --finetune line).
    "finetune": {
        "lr": 2e-3,
        "crop_padding": 4,
        "epochs": 15,
        "track_test": False,
    },
}
FINETUNE_RECIPE = "finetune"  # the fine-tuning commands' default recipe

# The fast presets: airbench's recipe (Keller Jordan, 2024) on the hfs-air layout, in mean-loss
# units: its lr 11.5 per 1024 examples with a summed loss and momentum 0.85 is lr 1.5 here, its
# decoupled decay 0.0153 is 0.002 per step (weight_decay = 0.002 / lr), and norm shifts learn
# 64x faster. Then label smoothing, 2 px translations, alternating flips, lookahead, bf16 and
# channels_last, and no per-epoch test pass (only the final one, with test-time augmentation).
# The conv filters train with Muon at the record's settings (airbench94_muon: Nesterov momentum
# 0.6, 3 Newton-Schulz steps, filters renormalised; rate 0.24 from lr 1.5 by MUON_LR_RATIO), the
# rest with the SGD above: on the AMX Xeon, 3 seeds of fast, +0.83 points for +4.6% of the wall
# time (docs/performance.md 5c, benchmarks/results/time_to_accuracy-xeon-amx-muon.json).
# ``fast`` aims at 85% test accuracy on CIFAR-10 within 5 minutes of a 2-core CPU, ``fast-long``
# at 90% within 15: see docs/performance.md for the measurements.
_AIR: dict[str, Any] = {
    "batch_size": 1024,
    "optimizer": "muon",
    "lr": 1.5,
    "momentum": 0.85,
    "muon_momentum": 0.6,
    "muon_steps": 3,
    "muon_normalize": True,
    "weight_decay": 0.002 / 1.5,
    "norm_lr_scale": 64.0,
    "schedule": "onecycle",
    "warmup_fraction": 0.23,
    "label_smoothing": 0.2,
    "crop_padding": 2,
    "flip": True,
    "alternate_flips": True,
    "lookahead_every": 5,
    "precision": "auto",
    "channels_last": True,
    "track_test": False,
    "tta_flip": True,
}
# The final test pass averages each image with its mirror; fast-long also averages 1 px shifts
# (6 views), in batches of 250 images so the 1,500-image passes stay in cache. Measured on the
# quiet 2-core CPU (docs/performance.md): with 6 views, fast's 5 seeds reached 85.9-86.4% in
# 274-304 s; the same checkpoints score 0.25 points less with the mirror alone, which saves about
# 10 s of a run that has no more to spare. fast-long: 89.0% in 812 s.
# Both train the nets without sharing (air-plain-s and air-plain-m: no phi, the head on the last
# stage): issue 16 makes each rung's default whichever net reaches its target sooner, and the
# shared nets were no more accurate for more time per step (AVX-512 EPYC, Muon, docs/
# performance.md 5d): at 7 epochs hfs-air-s 86.74% over 5 seeds against air-plain-s's
# 86.77% (and 2 seeds with SGD before, section 2), at 12 epochs hfs-air-m 89.33% in 916 s
# against air-plain-m's 89.21% in 786 s (one seed). `--model hfs-air-s` / `hfs-air-m` train them.
# fast trains its first 5 of 10 epochs at 20 px (--lowres-scale 0.625, an epoch at ~0.45x the
# time of a 32 px one): 87.29% (87.01-87.71, 5 seeds) in a median 263 s against the 7 epochs at
# 32 px before it, 86.77% (86.53-86.88) in 248 s, interleaved seed by seed in one session
# (docs/performance.md 5e, results/time_to_accuracy-epyc-lowres-seeds.json). fast-long keeps
# full-size epochs: 18 with the first 9 at 20 px gave 89.50% in 765 s against its 89.33% in
# 709 s (seed 0; results/time_to_accuracy-epyc-lowres-long.json).
RECIPES["fast"] = {**_AIR, "model": "air-plain-s", "epochs": 10, "lowres_fraction": 0.5,
                   "lowres_scale": 0.625, "eval_batch_size": 250}
RECIPES["fast-long"] = {**_AIR, "model": "air-plain-m", "epochs": 14, "eval_batch_size": 250,
                        "tta_translate": True}


# The public CIFAR-10 speed record, the peer the fast recipes are measured against:
# airbench94_muon.py (Keller Jordan, 2024; github.com/KellerJordan/cifar10-airbench), 94.01% in
# 2.59 s on an A100 (fp16, torch.compile). Its facts, in its units (a loss summed over the batch
# of 2000): 8 epochs; the conv filters under Muon, lr 0.24, Nesterov momentum 0.6, 3
# Newton-Schulz steps, each filter bank rescaled to norm sqrt(out channels) before its step, no
# weight decay; Nesterov SGD at momentum 0.85 on the norm shifts and the whitening bias (lr
# 0.053) and the head (lr 0.67), every SGD group decayed by 2e-6 x 2000 = 0.004 per unit of lr
# (torch weight_decay = 0.004 / its lr); every rate decays linearly from the first step to 0,
# no warmup; the whitening conv's bias trains for 3 epochs, then is detached (its rate also
# reaches 0 at epoch 3 where here it follows the common schedule, then freezes); batch norms
# with frozen scales, momentum 0.4 in PyTorch's convention, eps 1e-12 (AirOptions' defaults);
# the head a bias-free linear layer whose weights start at std 1, its logits divided by 256;
# label smoothing 0.2, alternating flips, 2 px translations, 6-view test-time augmentation.
# In mean-loss units the SGD rates are 2000x: the norms' 106 and the head's 1340. hfsnet's head
# keeps PyTorch's default init (std 1/sqrt(3 x 256)) and is scaled by sqrt(3 / 256) instead:
# the same function at the start and the same training with the head's rate divided by 768
# (1.745) and its weight decay multiplied by 768 (0.004 / 1.745 per step of lr); the norm
# shifts' 106 is then 60.75 x that rate. What differs: bf16 autocast (where it is faster than
# fp32: --precision auto) instead of fp16, and no compile; the translations pad with zeros (the
# record reflects); the whitening filters come from the first batch, mean removed (the record:
# 5000 images, raw second moments); Muon's filters see the head's weight decay (x (1 - 5.5e-4)
# before each update; the next rescaling undoes it).
# Issue 16's hand port (not this recipe) reached 90.71% after its 8 epochs in about 18-20 min on
# the 2-core AMD EPYC, quiet.
_RECORD_HEAD_LR = 0.67 * 2000 / 768
RECIPES["airbench94"] = {
    "model": "air-plain",
    "model_options": {"whiten_bias": True, "logit_scale": (3 / 256) ** 0.5},
    "epochs": 8,
    "batch_size": 2000,
    "optimizer": "muon",
    "lr": _RECORD_HEAD_LR,
    "momentum": 0.85,
    "weight_decay": 0.004 / _RECORD_HEAD_LR,
    "norm_lr_scale": 0.053 * 2000 / _RECORD_HEAD_LR,
    "decay_norms": True,
    "muon_lr": 0.24,
    "muon_momentum": 0.6,
    "muon_steps": 3,
    "muon_normalize": True,
    "whiten_bias_epochs": 3,
    "schedule": "onecycle",
    "warmup_fraction": 0.0,
    "label_smoothing": 0.2,
    "crop_padding": 2,
    "flip": True,
    "alternate_flips": True,
    "precision": "auto",
    "channels_last": True,
    "track_test": False,
    "tta_flip": True,
    "tta_translate": True,
    "eval_batch_size": 250,
}


def resolve_config(recipe: str = "default", **overrides: Any) -> TrainConfig:
    """TrainConfig defaults, then the recipe, then ``overrides`` (``None`` values are ignored).
    ``model_options`` merge key by key: an override replaces the recipe's options it names."""
    if recipe not in RECIPES:
        raise ConfigError(f"--recipe must be one of {sorted(RECIPES)}, got {recipe!r}")
    values = {**RECIPES[recipe], "recipe": recipe}
    given = {k: v for k, v in overrides.items() if v is not None}
    if isinstance(given.get("model_options"), dict):
        given["model_options"] = {**values.get("model_options", {}), **given["model_options"]}
    values.update(given)
    config = TrainConfig.from_dict(values)
    config.validate()
    return config

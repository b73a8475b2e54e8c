"""Typed training configuration, named recipes, and their JSON round trip."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from hfsnet.errors import HfsnetError

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "onecycle")
PRECISIONS = ("fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")
NONFINITE = ("stop", "skip")


class ConfigError(HfsnetError):
    """A configuration value out of range; the message names the flag."""


@dataclass
class TrainConfig:
    """Everything that decides a training run. Saved in every run directory and checkpoint."""

    model: str = "hfs-seed"
    model_options: dict[str, Any] = field(default_factory=dict)
    data: str = ""
    val_split: float = 0.0
    limit_train: int | None = None
    image_size: int | None = None
    skip_bad: bool = False  # leave unreadable image files out (and report them) instead of failing
    recipe: str = "default"
    epochs: int = 3
    batch_size: int = 64
    eval_batch_size: int = 500
    optimizer: str = "adamw"
    # lr and crops tuned for the short default run (hfs-seed, 3 epochs): on a 10k-image proxy
    # no crops and lr 4e-3 gave 45.6% vs 36.9% for 4 px crops and 2e-3 (longer recipes add crops).
    lr: float = 4e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    warmup_fraction: float = 0.15  # of all steps; onecycle ramps up over this share
    label_smoothing: float = 0.0
    crop_padding: int = 0  # px of zero padding for random crops; 0 = no crops
    flip: bool = True
    cutout: int = 0  # side of the square cut out, px; 0 = off
    seed: int = 0
    device: str = "auto"
    precision: str = "bf16"
    channels_last: bool = True
    track_test: bool = True  # evaluate the test set after every epoch (for learning curves)
    checkpoint_every: int = 0  # also checkpoint every N optimizer steps; 0 = epoch ends only
    keep_last: int = 2  # step checkpoints kept in <run>/checkpoints
    nonfinite: str = "stop"  # NaN/Inf loss or gradient: "stop" the run, or "skip" the step
    deterministic: bool = False  # torch deterministic algorithms (bit-exact resume on CPU)
    sync_bn: bool = False  # under torchrun: batch-norm statistics over the global batch
    ema_decay: float = 0.0  # evaluate an exponential moving average of the weights; 0 = off
    tta_flip: bool = False  # evaluation averages the logits of each image and its mirror image
    tta_translate: bool = False  # evaluation also averages views shifted by 1 px (x2 the cost)
    # Learning-rate multiplier of 1-D parameters (norm shifts, biases). Nets whose norm scales
    # are frozen (hfs-air) train the shifts much faster than the weights (airbench: 64x).
    norm_lr_scale: float = 1.0
    # Lookahead: every N steps, move a slow copy of the weights towards the fast ones and reset
    # the fast ones to it (Zhang et al. 2019; airbench's cubic schedule); 0 = off.
    lookahead_every: int = 0
    # Derandomised flips: every image is mirrored in alternate epochs, from a random start
    # (airbench): each epoch sees the view the previous one did not.
    alternate_flips: bool = False
    threads: int = 0  # torch intra-op threads; 0 = torch's default (one per core)

    def validate(self) -> None:
        checks = [
            (self.epochs >= 1, "--epochs must be >= 1", self.epochs),
            (self.batch_size >= 1, "--batch-size must be >= 1", self.batch_size),
            (self.eval_batch_size >= 1, "--eval-batch-size must be >= 1", self.eval_batch_size),
            (self.lr > 0, "--lr must be > 0", self.lr),
            (self.weight_decay >= 0, "--weight-decay must be >= 0", self.weight_decay),
            (0 <= self.label_smoothing < 1, "--label-smoothing must be in [0, 1)",
             self.label_smoothing),
            (0 <= self.val_split < 1, "--val-split must be in [0, 1)", self.val_split),
            (self.limit_train is None or self.limit_train > 0, "--limit-train must be > 0",
             self.limit_train),
            (self.crop_padding >= 0, "--crop-padding must be >= 0", self.crop_padding),
            (self.cutout >= 0, "--cutout must be >= 0", self.cutout),
            (self.optimizer in OPTIMIZERS, f"--optimizer must be one of {OPTIMIZERS}",
             self.optimizer),
            (self.schedule in SCHEDULES, f"--schedule must be one of {SCHEDULES}", self.schedule),
            (self.precision in PRECISIONS, f"--precision must be one of {PRECISIONS}",
             self.precision),
            (self.device in DEVICES, f"--device must be one of {DEVICES}", self.device),
            (0 <= self.warmup_fraction < 1, "--warmup-fraction must be in [0, 1)",
             self.warmup_fraction),
            (self.checkpoint_every >= 0, "--checkpoint-every must be >= 0",
             self.checkpoint_every),
            (self.keep_last >= 1, "--keep-last must be >= 1", self.keep_last),
            (0 <= self.ema_decay < 1, "--ema-decay must be in [0, 1)", self.ema_decay),
            (self.threads >= 0, "--threads must be >= 0", self.threads),
            (self.norm_lr_scale > 0, "--norm-lr-scale must be > 0", self.norm_lr_scale),
            (self.lookahead_every >= 0, "--lookahead-every must be >= 0",
             self.lookahead_every),
            (self.nonfinite in NONFINITE, f"--nonfinite must be one of {NONFINITE}",
             self.nonfinite),
        ]
        for ok, message, value in checks:
            if not ok:
                raise ConfigError(f"{message}, got {value!r}")
        if self.tta_translate and not self.tta_flip:
            raise ConfigError("--tta-translate averages shifted mirror pairs: it needs --tta-flip "
                              "(or add --no-tta-translate)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a plain dict, rejecting unknown keys and values of the wrong type."""
        return cls(**checked_fields(cls, values))


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
}

# The fast presets: airbench's recipe (Keller Jordan, 2024) on the hfs-air nets, in mean-loss
# units: its lr 11.5 per 1024 examples with a summed loss and momentum 0.85 is lr 1.5 here, its
# decoupled decay 0.0153 is 0.002 per step (weight_decay = 0.002 / lr), and norm shifts learn
# 64x faster. Then label smoothing, 2 px translations, alternating flips, lookahead, bf16 and
# channels_last, and no per-epoch test pass (only the final one, with test-time augmentation).
# ``fast`` aims at 85% test accuracy on CIFAR-10 within 5 minutes of a 2-core CPU, ``fast-long``
# at 90% within 15: see docs/performance.md for the measurements.
_AIR: dict[str, Any] = {
    "batch_size": 1024,
    "optimizer": "sgd",
    "lr": 1.5,
    "momentum": 0.85,
    "weight_decay": 0.002 / 1.5,
    "norm_lr_scale": 64.0,
    "schedule": "onecycle",
    "warmup_fraction": 0.23,
    "label_smoothing": 0.2,
    "crop_padding": 2,
    "flip": True,
    "alternate_flips": True,
    "lookahead_every": 5,
    "precision": "bf16",
    "channels_last": True,
    "track_test": False,
    "tta_flip": True,
}
# The final test pass averages each image with its mirror; fast-long also averages 1 px shifts
# (6 views), in batches of 250 images so the 1,500-image passes stay in cache. Measured on the
# quiet 2-core CPU (docs/performance.md): with 6 views, fast's 5 seeds reached 85.9-86.4% in
# 274-304 s; the same checkpoints score 0.25 points less with the mirror alone, which saves about
# 10 s of a run that has no more to spare. fast-long: 89.0% in 812 s.
RECIPES["fast"] = {**_AIR, "model": "hfs-air-s", "epochs": 7, "eval_batch_size": 250}
RECIPES["fast-long"] = {**_AIR, "model": "hfs-air-m", "epochs": 14, "eval_batch_size": 250,
                        "tta_translate": True}


def resolve_config(recipe: str = "default", **overrides: Any) -> TrainConfig:
    """TrainConfig defaults, then the recipe, then ``overrides`` (``None`` values are ignored)."""
    if recipe not in RECIPES:
        raise ConfigError(f"--recipe must be one of {sorted(RECIPES)}, got {recipe!r}")
    values = {**RECIPES[recipe], "recipe": recipe}
    values.update({k: v for k, v in overrides.items() if v is not None})
    config = TrainConfig.from_dict(values)
    config.validate()
    return config

"""Fine-tuning a trained network on new data: one learning rate for the trunk and another for the
head, an optional head-only phase with the trunk frozen, stage-by-stage unfreezing, and a new head
when the class set changes (fresh, or fitted on the trunk's feature cache first).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from torch import nn

from hfsnet.data import DataSplits
from hfsnet.fsutil import atomic_write_bytes
from hfsnet.models import FeatureClassifier
from hfsnet.models.level_head import install_head
from hfsnet.train.config import ConfigError, TrainConfig
from hfsnet.train.loop import Trainer, TrainResult
from hfsnet.train.optim import ParamGroup
from hfsnet.train.options import above, at_least, option, validate_fields
from hfsnet.train.runtime import seed_everything
from hfsnet.transfer.fit import HeadOptions, cache_for, fit_cached_head
from hfsnet.transfer.source import Source, for_trunk

TRUNK_LR_RATIO = 0.2  # the seed's fine-tuning rate: 0.2 x the head's
UNFREEZE = ("all", "gradual")
HEAD_INITS = ("auto", "reset", "cache")
# Batch norm statistics of the stages being trained. "frozen" (the source's running statistics,
# norm layers in eval mode) is the default because batch statistics of a pretrained trunk on
# new images differ from its running ones: the fitted head (calibrated on eval-mode features) has
# a loss of 26 in training mode against 0.56 in eval mode on a Fashion-MNIST batch
# (benchmarks/norm_stats_probe.py), and 5-epoch fine-tunes at 100 images per class lost 4-38
# points with batch statistics on every task (benchmarks/adapt.py, ft-*-batch methods).
NORM_STATS = ("frozen", "batch")
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@dataclass
class FinetuneOptions:
    """``head_lr`` None: the config's lr; ``trunk_lr`` None: 0.2 x ``head_lr``.

    ``head_init``: ``auto`` keeps the head when the class list is unchanged and replaces the
    classifier otherwise; ``reset`` always replaces it; ``cache`` fits a new linear head by ridge
    on the trunk's feature cache of the new data (under ``cache``) before training.
    """

    head_lr: float | None = option(None, check=above(0),
                                   help="head learning rate; default: the recipe's lr")
    trunk_lr: float | None = option(None, check=above(0), help="trunk learning rate; default "
                                    "0.2 x head-lr (to keep the trunk fixed: --freeze-epochs)")
    freeze_epochs: int = option(0, check=at_least(0), help="epochs training the head only "
                                "before the trunk is unfrozen (at most --epochs)")
    unfreeze: str = option("all", choices=UNFREEZE, help="after the frozen epochs: the whole "
                           "trunk, or one stage per epoch from the deepest")
    frozen_levels: int = option(0, check=at_least(0), metavar="N",
                                help="the trunk's N shallowest levels stay frozen for the whole "
                                "run (no gradients through them, in no optimizer group)")
    norm_stats: str = option("frozen", choices=NORM_STATS, help="batch norm statistics of the "
                             "stages being trained: frozen keeps the source's running statistics "
                             "(the norms' affine weights still learn); batch normalises by each "
                             "batch and updates them, as training from scratch does")
    train_bn: bool = option(False, help="let batch norm layers of frozen stages train "
                            "(affine weights and running statistics)")
    head_init: str = option("auto", choices=HEAD_INITS, help="auto: keep the head if the "
                            "classes are unchanged, else a fresh classifier; cache: fit a ridge "
                            "head on the feature cache first")
    cache: Path | None = None  # default: feature-cache/ beside the source checkpoint
    head: HeadOptions = field(default_factory=HeadOptions)

    def rates(self, config: TrainConfig) -> tuple[float, float]:
        head_lr = self.head_lr if self.head_lr is not None else config.lr
        return head_lr, self.trunk_lr if self.trunk_lr is not None else TRUNK_LR_RATIO * head_lr

    def validate(self, config: TrainConfig) -> None:
        validate_fields(self, ConfigError)
        if self.freeze_epochs > config.epochs:
            raise ConfigError(f"--freeze-epochs must be in [0, --epochs={config.epochs}], got "
                              f"{self.freeze_epochs!r}")


def param_groups(model: FeatureClassifier, head_lr: float, trunk_lr: float,
                 frozen_levels: int = 0) -> list[ParamGroup]:
    """The head and the trunk as two optimizer groups with their own base learning rates; the
    parameters of the ``frozen_levels`` shallowest levels in neither."""
    held = {id(p) for modules in model.stage_modules()[:frozen_levels] for m in modules
            for p in m.parameters()}
    trunk = [p for p in model.trunk_parameters() if id(p) not in held]
    return [ParamGroup("head", model.head_parameters(), head_lr),
            ParamGroup("trunk", trunk, trunk_lr)]


def check_frozen_levels(model: FeatureClassifier, frozen_levels: int) -> None:
    """At least one of the trunk's levels must train (a frozen trunk is --freeze-epochs)."""
    levels = len(model.stage_modules())
    if frozen_levels >= levels:
        raise ConfigError(f"--frozen-levels {frozen_levels}: {model.model_name} has {levels} "
                          f"levels, so at most {levels - 1} can stay frozen (to train the head "
                          "alone, use --freeze-epochs)")


def describe_groups(model: FeatureClassifier, groups: Sequence[ParamGroup]) -> list[str]:
    """One line per group (name, tensors, parameters, learning rate), then a line for any of the
    model's parameters in no group (they would not train) or in several: mis-grouped
    parameters otherwise go unnoticed until the accuracy disappoints."""
    lines = [f"{g.name}: {len(g.params)} tensors, {sum(p.numel() for p in g.params):,} params, "
             f"lr {g.lr:g}" for g in groups]
    seen: dict[int, int] = {}
    for group in groups:
        for param in group.params:
            seen[id(param)] = seen.get(id(param), 0) + 1
    ungrouped = [p for p in model.parameters() if id(p) not in seen]
    if ungrouped:
        lines.append(f"in no group (not trained): {len(ungrouped)} tensors, "
                     f"{sum(p.numel() for p in ungrouped):,} params")
    repeated = sum(count > 1 for count in seen.values())
    if repeated:
        lines.append(f"in several groups: {repeated} tensors")
    return lines


def print_groups(model: FeatureClassifier, groups: Sequence[ParamGroup],
                 stream: TextIO | None = None) -> None:
    """The parameter groups as :func:`describe_groups` words them, on stderr by default (stdout
    may carry --json)."""
    out = stream or sys.stderr
    print("fine-tuning parameter groups:", file=out)
    for line in describe_groups(model, groups):
        print(f"  {line}", file=out)


class FreezeSchedule:
    """An epoch hook: the trunk is frozen for ``freeze_epochs``, then unfrozen at once
    (``all``) or one stage per epoch from the deepest (``gradual``); the ``frozen_levels``
    shallowest stages stay frozen throughout.

    A frozen stage gets no gradients and, unless ``train_bn``, runs in eval mode so its batch
    norm statistics (and dropout) stay fixed: its weights and buffers come out bit-identical.
    With ``train_bn`` its norm layers keep training (affine weights and running statistics).
    A stage in training keeps its norm layers in eval mode (fixed statistics, affine weights
    learning) under ``norm_stats="frozen"``, and trains them fully under ``"batch"``.
    """

    def __init__(self, model: FeatureClassifier, freeze_epochs: int, unfreeze: str = "all",
                 train_bn: bool = False, norm_stats: str = "frozen",
                 frozen_levels: int = 0) -> None:
        # Only the stages' modules are ever switched, so what share() froze (in no stage)
        # stays frozen.
        self.stages = model.stage_modules()
        self.freeze_epochs = freeze_epochs
        self.unfreeze = unfreeze
        self.frozen_levels = frozen_levels
        self.train_bn = train_bn
        self.norm_stats = norm_stats

    def frozen(self, epoch: int) -> list[int]:
        """Indices of the stages frozen during ``epoch`` (0-based)."""
        n = len(self.stages)
        if epoch < self.freeze_epochs:
            scheduled = n
        elif self.unfreeze == "all":
            scheduled = 0
        else:
            scheduled = max(0, n - (epoch - self.freeze_epochs + 1))
        return list(range(max(scheduled, self.frozen_levels)))

    def __call__(self, trainer: Trainer, epoch: int) -> None:
        frozen = set(self.frozen(epoch))
        for index, modules in enumerate(self.stages):
            for module in modules:
                self._set(module, index in frozen)

    def _set(self, module: nn.Module, frozen: bool) -> None:
        for param in module.parameters():
            param.requires_grad = not frozen
        if not frozen:
            if self.norm_stats == "frozen":
                for norm in module.modules():
                    if isinstance(norm, NORMS):
                        norm.eval()
            return
        if self.train_bn:
            for norm in module.modules():
                if isinstance(norm, NORMS):
                    for param in norm.parameters():
                        param.requires_grad = True
        else:
            module.eval()


def prepare_head(source: Source, data: DataSplits, options: FinetuneOptions) -> dict[str, Any]:
    """Give ``source.model`` the head fine-tuning starts from; returns what was done."""
    model = source.model
    same_classes = data.classes == source.classes
    if options.head_init == "cache":
        ridge = dataclasses.replace(options.head, method="ridge", hidden=0)
        root = options.cache or source.default_cache
        if root is None:
            raise ConfigError(f"--head-init cache: {source.origin} has no checkpoint folder to "
                              "keep the feature cache beside; pass --cache DIR")
        found = cache_for(model, data, root, ridge)
        head, details = fit_cached_head(found.cache, model.stage_channels(), ridge)
        install_head(model, head)
        return {"head": "ridge on the feature cache", "cache_path": str(found.cache.path),
                "cache_built": found.built, "cache_seconds": found.seconds, **details}
    if options.head_init == "reset" or not same_classes:
        model.reset_classifier(data.num_classes)
        return {"head": "classifier reset"}
    return {"head": "kept"}


def build_finetuner(source: Source, data: DataSplits, config: TrainConfig, out_dir: Path,
                    options: FinetuneOptions, *, progress: bool = True,
                    overwrite: bool = False) -> tuple[Trainer, dict[str, Any]]:
    """A Trainer over ``data`` for ``source.model`` with a head group and a trunk group, the
    freeze schedule hooked in; and a record of the fine-tuning settings. ``overwrite``: replace
    a run already in ``out_dir`` (refused otherwise)."""
    config.validate()
    options.validate(config)
    data = for_trunk(source, data)
    seed_everything(config.seed)
    head_info = prepare_head(source, data, options)
    model = source.model
    config = dataclasses.replace(config, model=model.model_name,
                                 model_options=model.model_options,
                                 image_size=source.config.get("image_size"))
    head_lr, trunk_lr = options.rates(config)
    check_frozen_levels(model, options.frozen_levels)
    groups = param_groups(model, head_lr, trunk_lr, options.frozen_levels)
    print_groups(model, groups)
    trainer = Trainer(config, out_dir, data, model, groups=groups, progress=progress,
                      overwrite=overwrite)
    trainer.epoch_hooks.append(FreezeSchedule(model, options.freeze_epochs, options.unfreeze,
                                              options.train_bn, options.norm_stats,
                                              options.frozen_levels))
    record = {"source": source.origin, "head_lr": head_lr, "trunk_lr": trunk_lr,
              "freeze_epochs": options.freeze_epochs, "unfreeze": options.unfreeze,
              "frozen_levels": options.frozen_levels,
              "norm_stats": options.norm_stats, "train_bn": options.train_bn,
              "head_init": options.head_init,
              "source_classes": source.classes, "classes": data.classes, **head_info}
    return trainer, record


def finetune(source: Source, data: DataSplits, config: TrainConfig, out_dir: str | Path,
             options: FinetuneOptions, *, progress: bool = True,
             overwrite: bool = False) -> TrainResult:
    """Fine-tune ``source.model`` on ``data``; the run directory gets ``finetune.json`` too."""
    out = Path(out_dir)
    trainer, record = build_finetuner(source, data, config, out, options, progress=progress,
                                      overwrite=overwrite)
    result = trainer.fit()
    atomic_write_bytes(out / "finetune.json", json.dumps(record, indent=2).encode())
    return result

"""``level-head``: any registered trunk with its head replaced by a :class:`LevelHead` over
chosen pooled stages, so that a checkpoint whose head was replaced (``fit-head``, ``finetune
--head-init cache``) rebuilds through the registry like any other model.

Its options name the trunk (``trunk``, ``trunk_options``) and the head (``levels``, ``pool``,
``hidden``, and ``transform``: the settings of its fixed descriptor transform, if any). The
rebuilt model is the trunk's own class with ``.head`` swapped, so trunk weights keep their names
and the model's stages are the trunk's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hfsnet.models.base import FeatureClassifier, ModelEntry
from hfsnet.models.errors import ModelOptionError
from hfsnet.models.head import POOLS, TRANSFORM_DEFAULTS, LevelHead, level_widths
from hfsnet.models.options import (
    ModelOptions,
    check_choice,
    check_image_size,
    check_int,
    check_ints,
    is_int,
    refuse,
    unknown_option,
)

LEVEL_HEAD_MODEL = "level-head"


@dataclass
class LevelHeadOptions(ModelOptions):
    """``trunk``: a registered model name; ``trunk_options``: its options. ``levels``: 1-based
    stage numbers the head reads (empty: all). ``pool``: how each is pooled. ``hidden``: the
    head's hidden layer width (0: none). ``transform``: settings of the head's
    :class:`~hfsnet.models.head.DescriptorTransform` (None: none). ``image_size`` is passed on to
    the trunk."""

    trunk: str = ""
    trunk_options: Mapping[str, Any] | None = None
    levels: Sequence[int] = ()
    pool: str = "gap"
    hidden: int = 0
    image_size: int | None = None
    transform: Mapping[str, Any] | None = None

    def validate(self) -> None:
        if not isinstance(self.trunk, str) or not self.trunk:
            raise refuse("trunk", "the name of a registered model", self.trunk)
        if self.trunk == LEVEL_HEAD_MODEL:
            raise refuse("trunk", "a plain model (a level-head replaces its trunk's head)",
                         self.trunk)
        if self.trunk_options is not None and not isinstance(self.trunk_options, Mapping):
            raise refuse("trunk_options", "a mapping of option names to values",
                         self.trunk_options)
        if self.levels:
            check_ints("levels", self.levels)
        check_choice("pool", self.pool, POOLS)
        check_int("hidden", self.hidden, minimum=0)
        check_image_size(self.image_size)
        if self.transform is not None:
            check_transform(self.transform)


def check_transform(settings: object) -> None:
    """``settings`` name :data:`TRANSFORM_DEFAULTS` keys with values of their types."""
    if not isinstance(settings, Mapping):
        raise refuse("transform", "a mapping of transform settings", settings)
    for key, value in settings.items():
        if key not in TRANSFORM_DEFAULTS:
            raise unknown_option(f"transform.{key}", [f"transform.{k}" for k in TRANSFORM_DEFAULTS])
        if isinstance(TRANSFORM_DEFAULTS[key], bool):
            if not isinstance(value, bool):
                raise refuse(f"transform.{key}", "true or false", value)
        elif not is_int(value) or value < 0:
            raise refuse(f"transform.{key}", "an integer >= 0", value)


def trunk_spec(model: FeatureClassifier) -> tuple[str, dict[str, Any]]:
    """(registered name, options) of the model's trunk, looking through a ``level-head``."""
    if model.model_name == LEVEL_HEAD_MODEL:
        options = model.model_options
        return options["trunk"], dict(options.get("trunk_options") or {})
    return model.model_name, dict(model.model_options)


def install_head(model: FeatureClassifier, head: LevelHead) -> FeatureClassifier:
    """Replace ``model.head`` with ``head`` and record how the registry rebuilds the result.

    The record holds the head's levels, pool, hidden width and transform settings (only when it
    has a transform, so heads without one keep their old options): a head with dropout, without
    a bias or with a scale other than 1 would rebuild without them.
    """
    trunk, trunk_options = trunk_spec(model)
    device = next(model.parameters()).device
    model.head = head.to(device)
    model.model_name = LEVEL_HEAD_MODEL
    model.model_options = {"trunk": trunk, "trunk_options": trunk_options, "levels": head.levels,
                           "pool": head.pool, "hidden": head.hidden_width}
    if head.transform_settings is not None:
        model.model_options["transform"] = head.transform_settings
    return model


def build_level_head_model(num_classes: int, in_channels: int,
                           options: LevelHeadOptions) -> FeatureClassifier:
    """The trunk ``options.trunk`` built with ``options.trunk_options``, its head a
    :class:`LevelHead`."""
    # The registry imports this module to read ENTRIES, so it is imported here, at call time.
    from hfsnet.models.registry import create_model

    trunk_options = dict(options.trunk_options or {})
    if options.image_size is not None:
        trunk_options.setdefault("image_size", options.image_size)
    model = create_model(options.trunk, num_classes=num_classes, in_channels=in_channels,
                         **trunk_options)
    n = len(model.stage_channels())
    if any(level > n for level in options.levels):
        raise ModelOptionError(f"model {LEVEL_HEAD_MODEL!r}: option 'levels': expected stage "
                               f"numbers in 1..{n} (trunk {options.trunk!r} has {n} stages), "
                               f"got {list(options.levels)}")
    chosen = list(options.levels) or list(range(1, n + 1))
    width = sum(level_widths(model.stage_channels(), chosen, options.pool))
    keep = (options.transform or {}).get("keep", 0)
    if keep > width:
        raise ModelOptionError(f"model {LEVEL_HEAD_MODEL!r}: option 'transform.keep': expected at "
                               f"most the descriptor width {width}, got {keep}")
    head = LevelHead(model.stage_channels(), chosen, options.pool, num_classes, options.hidden,
                     transform=options.transform)
    return install_head(model, head)


ENTRIES = (
    ModelEntry(LEVEL_HEAD_MODEL, build_level_head_model, LevelHeadOptions,
               "a registered trunk with a linear/MLP head over chosen pooled stages (written by "
               "fit-head and finetune --head-init cache)"),
)

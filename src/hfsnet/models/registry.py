"""Name -> model registry. Checkpoints name their model; loading goes through here only.

The table is built from the ``ENTRIES`` of the families listed in ``FAMILIES``; importing a
module registers nothing. User networks are added at run time with :func:`register_entry`.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

import torch

from hfsnet.models import efficientnet, hfs, hfs_air, level_head, seed_cnn
from hfsnet.models.base import FeatureClassifier, ModelEntry, count_params
from hfsnet.models.errors import ModelOptionError, UnknownModelError
from hfsnet.models.options import ModelOptions, is_int

FAMILIES = (seed_cnn, hfs, hfs_air, efficientnet, level_head)
# The largest model create_model builds (8 GB of fp32 weights): a bound that turns absurd options
# (a crafted checkpoint's width=10**9) into one line instead of an out-of-memory crash.
MAX_PARAMS = 2_000_000_000

_REGISTRY: dict[str, ModelEntry] = {e.name: e for family in FAMILIES for e in family.ENTRIES}


def register_entry(entry: ModelEntry) -> None:
    """Add ``entry`` (a user network) to the registry."""
    if entry.name in _REGISTRY:
        raise ValueError(f"model name {entry.name!r} is already registered")
    _REGISTRY[entry.name] = entry


def get_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownModelError(
            f"unknown model {name!r}.{hint} Valid models: {', '.join(sorted(_REGISTRY))}"
        ) from None


def parse_options(entry: ModelEntry, options: Mapping[str, Any]) -> ModelOptions:
    """The entry's preset defaults overridden by ``options``, as its checked options."""
    try:
        return entry.options.from_mapping({**entry.defaults, **options})
    except ModelOptionError as err:
        raise ModelOptionError(f"model {entry.name!r}: {err}") from None


def check_size(entry: ModelEntry, num_classes: int, in_channels: int,
               options: ModelOptions) -> None:
    """Refuse options that make more than MAX_PARAMS parameters, measured by building the model
    on the meta device (no memory behind its tensors) before building it for real."""
    if not entry.options.bounded or torch.get_default_device().type == "meta":
        return  # a model built inside another model's measurement is measured with it
    try:
        with torch.device("meta"):
            n = count_params(entry.constructor(num_classes, in_channels, options))
    except RuntimeError as err:
        if "overflow" not in str(err):
            raise
        raise ModelOptionError(f"model {entry.name!r}: these options make a tensor too large "
                               "to index; expected smaller widths or fewer layers") from None
    if n > MAX_PARAMS:
        raise ModelOptionError(f"model {entry.name!r}: these options make {n:,} parameters, "
                               f"more than the {MAX_PARAMS:,} hfsnet builds; expected smaller "
                               "widths or fewer layers")


def create_model(
    name: str, num_classes: int = 10, in_channels: int = 3, **options: Any
) -> FeatureClassifier:
    """Build the registered model ``name``; ``options`` override the preset's defaults."""
    entry = get_entry(name)
    for arg, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if not is_int(value) or value < 1:
            raise ModelOptionError(f"model {name!r}: {arg}: expected an integer >= 1, got "
                                   f"{value!r}")
    parsed = parse_options(entry, options)
    check_size(entry, num_classes, in_channels, parsed)
    model = entry.constructor(num_classes, in_channels, parsed)
    model.model_name = name
    model.model_options = dict(options)
    return model


def list_models() -> list[ModelEntry]:
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]

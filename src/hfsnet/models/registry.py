"""Name -> constructor registry. Checkpoints name their model; loading goes through here only."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hfsnet.errors import HfsnetError
from hfsnet.models.base import FeatureClassifier

Constructor = Callable[..., FeatureClassifier]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    constructor: Constructor
    description: str
    defaults: dict[str, Any]


_REGISTRY: dict[str, ModelEntry] = {}


class UnknownModelError(HfsnetError):
    """A model name that is not registered."""


def register(name: str, description: str, **defaults: Any) -> Callable[[Constructor], Constructor]:
    """Register ``constructor(num_classes, in_channels, **options)`` under ``name``.

    ``defaults`` are options baked into this name (a preset); callers may still override them.
    """

    def wrap(constructor: Constructor) -> Constructor:
        register_entry(name, constructor, description, **defaults)
        return constructor

    return wrap


def register_entry(name: str, constructor: Constructor, description: str, **defaults: Any) -> None:
    if name in _REGISTRY:
        raise ValueError(f"model name {name!r} is already registered")
    _REGISTRY[name] = ModelEntry(name, constructor, description, dict(defaults))


def get_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownModelError(
            f"unknown model {name!r}.{hint} Valid models: {', '.join(sorted(_REGISTRY))}"
        ) from None


def create_model(
    name: str, num_classes: int = 10, in_channels: int = 3, **options: Any
) -> FeatureClassifier:
    """Build the registered model ``name``; ``options`` override the preset's defaults."""
    entry = get_entry(name)
    merged = {**entry.defaults, **options}
    try:
        model = entry.constructor(num_classes=num_classes, in_channels=in_channels, **merged)
    except TypeError as err:
        raise UnknownModelError(f"model {name!r}: bad option: {err}") from None
    model.model_name = name
    model.model_options = dict(options)
    return model


def list_models() -> list[ModelEntry]:
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]

"""User networks named ``module.path:factory`` on the command line, shared and registered.

The import happens only for a name the user typed (``--model``, or a config file they passed);
a checkpoint of a user network stores the name but is never a reason to import it: rebuilding
one needs the same ``--model module.path:factory`` again (:func:`model_from_checkpoint`).
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from torch import nn

from hfsnet.errors import HfsnetError
from hfsnet.models import (
    FeatureClassifier,
    ModelEntry,
    ModelOptions,
    UnknownModelError,
    create_model,
    get_entry,
    register_entry,
)
from hfsnet.models.options import check_image_size, unknown_option
from hfsnet.models.share import share
from hfsnet.train.checkpoint import Checkpoint, CheckpointError, check_weights

DEFAULT_IMAGE_SIZE = 32  # px, when the caller gives none (CIFAR)


class UserModelError(HfsnetError):
    """A ``module.path:factory`` that cannot be imported or does not build a network."""


def is_user_spec(name: str) -> bool:
    """Whether a model name is a ``module.path:factory`` reference rather than a registry name."""
    return ":" in name


def _split(spec: str) -> tuple[str, str]:
    module, _, attr = spec.partition(":")
    if not module or not attr or ":" in attr:
        raise UserModelError(f"--model: expected module.path:factory (like mynets:build), "
                             f"got {spec!r}")
    return module, attr


def import_factory(spec: str) -> Callable[..., Any]:
    """The callable ``module.path:name`` names; ``name`` may be dotted (``Class.create``).

    The working directory is searched after the installed packages, as ``python -m`` would.
    """
    module_name, attr = _split(spec)
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.append(cwd)
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise UserModelError(f"--model {spec}: cannot import module {module_name!r} ({err}); "
                             "is it on PYTHONPATH or in the working directory?") from None
    for part in attr.split("."):
        if not hasattr(target, part):
            raise UserModelError(f"--model {spec}: module {module_name!r} has no {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise UserModelError(f"--model {spec}: {attr!r} is not callable")
    return target


def _layer_list(value: str | Sequence[str] | None) -> list[str]:
    """``share_layers`` given as "a,b" (a --model-opt) or as a list (--share-layers, configs)."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [item.strip() for item in items if item.strip()]


def build_backbone(spec: str, factory: Callable[..., Any], options: dict[str, Any]) -> nn.Module:
    """Call the user's factory with ``options`` and check that it returned a network."""
    try:
        backbone = factory(**options)
    except TypeError as err:
        raise UserModelError(f"--model {spec}: bad option for the factory: {err}") from None
    if not isinstance(backbone, nn.Module):
        raise UserModelError(f"--model {spec}: the factory returned "
                             f"{type(backbone).__name__}, expected a torch.nn.Module")
    return backbone


SHARE_PREFIX = "share_"


@dataclass
class SharedNetOptions(ModelOptions):
    """A user network's options: ``share_*`` configure the sharing (see :func:`share`),
    ``image_size`` the dry run's input side, and every other option goes to the factory (which
    checks them itself). The network is the user's own, so its size is not bounded."""

    bounded: ClassVar[bool] = False

    share_layers: str | Sequence[str] | None = None
    share_fuse: str = "concat"
    share_pool: str = "gap"
    share_proj: int = 256
    share_dropout: float = 0.0
    image_size: int | None = None
    factory: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> Self:
        """Split ``options`` into the sharing's and the factory's."""
        own = [name for name in cls.names() if name != "factory"]
        for key in options:
            if key.startswith(SHARE_PREFIX) and key not in own:
                raise unknown_option(key, own)
        made = cls(**{k: v for k, v in options.items() if k in own},
                   factory={k: v for k, v in options.items() if k not in own})
        made.validate()
        return made

    def validate(self) -> None:
        check_image_size(self.image_size)


def _build_shared(spec: str, factory: Callable[..., Any], num_classes: int, in_channels: int,
                  options: SharedNetOptions) -> FeatureClassifier:
    """The registry constructor of a user network."""
    layers = _layer_list(options.share_layers)
    if not layers:
        raise UserModelError(f"--share-layers: model {spec} needs layers to tap; list them "
                             f"with `hfsnet layers {spec}`")
    backbone = build_backbone(spec, factory, options.factory)
    side = options.image_size or DEFAULT_IMAGE_SIZE
    return share(backbone, layers, fuse=options.share_fuse, pool=options.share_pool,
                 num_classes=num_classes, input_shape=(in_channels, side, side),
                 proj=options.share_proj, dropout=options.share_dropout)


def register_user_model(spec: str) -> None:
    """Import ``spec``'s factory and register it under ``spec``, so that ``create_model(spec,
    share_layers=[...])`` and the trainer build it like any registered model. Idempotent."""
    try:
        get_entry(spec)
        return
    except UnknownModelError:
        pass
    factory = import_factory(spec)
    constructor = functools.partial(_build_shared, spec, factory)
    register_entry(ModelEntry(spec, constructor, SharedNetOptions,
                              f"user network {spec}, shared through hfsnet.share"))


def load_weights(model: nn.Module, ckpt: Checkpoint) -> None:
    """Load the checkpoint's model weights into ``model``, which must fit them exactly."""
    weights = ckpt.section("model")
    check_weights(ckpt.path, model, weights)
    model.load_state_dict(weights)


def model_from_checkpoint(ckpt: Checkpoint, model: str | None = None) -> FeatureClassifier:
    """Rebuild a checkpoint's model; a user network needs its ``module.path:factory`` again.

    ``model`` is what the user passed as ``--model``: required for a checkpoint of a user
    network (it may differ from the stored name, e.g. after a module was renamed), refused for
    a registered model.
    """
    stored = ckpt.meta["model"]
    if not is_user_spec(stored):
        if model is not None:
            raise CheckpointError(f"--model: {ckpt.path} holds the registered model {stored!r}, "
                                  "which needs no --model; leave it out")
        return ckpt.build_model()
    if model is None:
        raise CheckpointError(f"{ckpt.path}: the model is the user network {stored}; pass "
                              f"--model {stored} to rebuild it (hfsnet never imports code "
                              "named in a checkpoint)")
    register_user_model(model)
    meta = ckpt.meta
    built = create_model(model, num_classes=meta["num_classes"], in_channels=meta["in_channels"],
                         **meta["model_options"])
    load_weights(built, ckpt)
    return built

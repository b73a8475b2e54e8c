"""Model families behind one registry: ``create_model(name, num_classes, in_channels, **opts)``."""

from hfsnet.models.base import FeatureClassifier, ModelEntry
from hfsnet.models.errors import ModelError, ModelOptionError, UnknownModelError
from hfsnet.models.options import ModelOptions
from hfsnet.models.registry import create_model, get_entry, list_models, register_entry

__all__ = ["FeatureClassifier", "ModelEntry", "ModelError", "ModelOptionError", "ModelOptions",
           "UnknownModelError", "create_model", "get_entry", "list_models", "register_entry"]

"""Model families behind one registry: ``create_model(name, num_classes, in_channels, **opts)``."""

from hfsnet.models import hfs, hfs_air, seed_cnn  # noqa: F401  (importing registers the families)
from hfsnet.models.base import FeatureClassifier
from hfsnet.models.registry import UnknownModelError, create_model, get_entry, list_models

__all__ = ["FeatureClassifier", "UnknownModelError", "create_model", "get_entry", "list_models"]

"""hfsnet: image classifiers built on hierarchical feature sharing."""

from hfsnet.models import create_model
from hfsnet.models.share import share

__all__ = ["create_model", "share"]

"""hfsnet: image classifiers built on hierarchical feature sharing."""

# Importing the cache package registers the ``level-head`` model that fit-head and finetune
# checkpoints name, so ``load_checkpoint(...).build_model()`` rebuilds them from Python too.
import hfsnet.transfer  # noqa: F401
from hfsnet.interop.share import share

__all__ = ["share"]

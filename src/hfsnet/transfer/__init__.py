"""Transfer a trained trunk: a multi-level feature cache, heads fitted on it (closed-form ridge
or SGD), and the ``level-head`` model those heads make. Importing this package registers
``level-head`` with the model registry."""

from hfsnet.transfer.errors import CacheError
from hfsnet.transfer.extract import CacheSpec, get_cache
from hfsnet.transfer.fit import HeadOptions, fit_cached_head, fit_head
from hfsnet.transfer.head import LEVEL_HEAD_MODEL, LevelHead, install_head
from hfsnet.transfer.ridge import fit_ridge
from hfsnet.transfer.sgd import SgdOptions, fit_sgd
from hfsnet.transfer.store import FeatureCache, open_cache

__all__ = ["LEVEL_HEAD_MODEL", "CacheError", "CacheSpec", "FeatureCache", "HeadOptions",
           "LevelHead", "SgdOptions", "fit_cached_head", "fit_head", "fit_ridge", "fit_sgd",
           "get_cache", "install_head", "open_cache"]

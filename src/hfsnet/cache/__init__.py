"""Transfer a trained trunk: a multi-level feature cache, heads fitted on it (closed-form ridge
or SGD), and the ``level-head`` model those heads make. Importing this package registers
``level-head`` with the model registry."""

from hfsnet.cache.errors import CacheError
from hfsnet.cache.extract import CacheSpec, get_cache
from hfsnet.cache.fit import HeadOptions, fit_cached_head, fit_head
from hfsnet.cache.head import LEVEL_HEAD_MODEL, LevelHead, install_head
from hfsnet.cache.ridge import fit_ridge
from hfsnet.cache.sgd import SgdOptions, fit_sgd
from hfsnet.cache.store import FeatureCache, open_cache

__all__ = ["LEVEL_HEAD_MODEL", "CacheError", "CacheSpec", "FeatureCache", "HeadOptions",
           "LevelHead", "SgdOptions", "fit_cached_head", "fit_head", "fit_ridge", "fit_sgd",
           "get_cache", "install_head", "open_cache"]

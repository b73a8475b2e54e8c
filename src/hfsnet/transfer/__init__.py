"""Transfer a trained trunk: a multi-level feature cache and heads fitted on it (closed-form
ridge or SGD). The ``level-head`` model those heads make is a model family
(:mod:`hfsnet.models.level_head`)."""

from hfsnet.transfer.errors import CacheError
from hfsnet.transfer.extract import CacheSpec, get_cache
from hfsnet.transfer.fit import HeadOptions, fit_cached_head, fit_head
from hfsnet.transfer.ridge import fit_ridge
from hfsnet.transfer.sgd import SgdOptions, fit_sgd
from hfsnet.transfer.store import FeatureCache, open_cache

__all__ = ["CacheError", "CacheSpec", "FeatureCache", "HeadOptions", "SgdOptions",
           "fit_cached_head", "fit_head", "fit_ridge", "fit_sgd", "get_cache", "open_cache"]

"""The error type of the feature cache and the heads fitted on it."""

from hfsnet.errors import HfsnetError


class CacheError(HfsnetError):
    """A feature cache, or a request for one, that cannot be used; the message names the cache
    directory, file or flag and says what was expected."""

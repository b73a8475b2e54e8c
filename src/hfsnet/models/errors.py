"""Why a model cannot be built as asked."""

from hfsnet.errors import HfsnetError


class ModelError(HfsnetError):
    """A model that cannot be built as asked: its name or its options."""


class UnknownModelError(ModelError):
    """A model name that is not registered."""


class ModelOptionError(ModelError):
    """An option a model does not take, a value out of its range, or options that would make
    a model too large to build."""

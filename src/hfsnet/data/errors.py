"""The one exception type for unusable datasets, files and data flags."""

from hfsnet.errors import HfsnetError
from hfsnet.textutil import printable


class DataError(HfsnetError):
    """A dataset, file or flag that cannot be used.

    The message names the offending file or command-line flag and says what was expected, so the
    CLI can print it as is.
    """


class MixedSizesError(DataError):
    """A folder whose images differ in size, loaded without a target ``image_size``."""


def listing(items: list[str], limit: int = 10) -> str:
    """Up to ``limit`` items joined for a message, then how many more there are."""
    shown = "; ".join(printable(item) for item in items[:limit])
    rest = len(items) - limit
    return f"{shown}; and {rest} more" if rest > 0 else shown


def human_bytes(count: int) -> str:
    """A byte count for a message: ``512 bytes``, ``4.0 KiB``, ``256.0 MiB``, ``6.0 GiB``."""
    if count < 1024:
        return f"{count} bytes"
    value = float(count)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"

"""Human-readable numbers for tables: counts with separators, bytes in binary units."""

from __future__ import annotations

_BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def format_count(value: float) -> str:
    """A count with thousands separators, e.g. ``890,410``."""
    return f"{round(value):,}"


def format_bytes(value: float) -> str:
    """Bytes in the largest binary unit that keeps the number at least 1, e.g. ``3.4 MiB``."""
    size = float(value)
    for unit in _BYTE_UNITS[:-1]:
        if abs(size) < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} {_BYTE_UNITS[-1]}"


def format_si(value: float) -> str:
    """A large count with an SI suffix (k, M, G, T), e.g. ``15.17 M`` for MACs."""
    for suffix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {suffix}"
    return f"{value:.0f}"

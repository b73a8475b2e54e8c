"""Text for the terminal (a bottom-layer module that every layer may use): plain-text tables, and
names from files made safe to print."""

from __future__ import annotations

import unicodedata
from collections.abc import Collection, Sequence

COLUMN_GAP = "  "


def format_columns(rows: Sequence[Sequence[str]], right_aligned: Collection[int] = ()) -> list[str]:
    """``rows`` (the header first, if any) as lines of columns padded to their widest cell, two
    spaces apart; the columns whose indices are in ``right_aligned`` (numbers) align right.
    Trailing spaces are stripped."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))] if rows else []
    lines = []
    for row in rows:
        cells = [cell.rjust(width) if i in right_aligned else cell.ljust(width)
                 for i, (cell, width) in enumerate(zip(row, widths, strict=True))]
        lines.append(COLUMN_GAP.join(cells).rstrip())
    return lines


# Characters that let text rewrite a terminal: C0/C1 controls and DEL (escape sequences, \r,
# \n forging extra lines), line/paragraph separators, and the bidirectional formatting marks
# that reorder what is displayed (the "Trojan Source" trick).
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                           "\u2066\u2067\u2068\u2069")


def _is_unsafe(char: str) -> bool:
    return unicodedata.category(char) in ("Cc", "Zl", "Zp") or char in _BIDI_CONTROLS


def printable(text: str) -> str:
    """``text`` with every control character written as its Python escape (``\\x1b``, ``\\n``,
    ``\\u202e``), for names read from files (class names, tensor names) that go into terminal
    output; letters of any script, emoji and ordinary spaces pass unchanged."""
    if not any(_is_unsafe(char) for char in text):
        return text
    return "".join(repr(char)[1:-1] if _is_unsafe(char) else char for char in text)

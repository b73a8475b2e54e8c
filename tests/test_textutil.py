"""printable(): names read from files cannot forge terminal output; ordinary text is unchanged."""

import pytest

from hfsnet.textutil import printable


@pytest.mark.parametrize("text,shown", [
    ("cat\x1b[2J\x1b[31mRED", "cat\\x1b[2J\\x1b[31mRED"),  # ANSI escape sequences
    ("dog\ntest accuracy 99.99%", "dog\\ntest accuracy 99.99%"),  # a forged output line
    ("a\rb\tc\x00d\x7f", "a\\rb\\tc\\x00d\\x7f"),
    ("\x85next line (C1)", "\\x85next line (C1)"),
    ("left\u2028right\u2029", "left\\u2028right\\u2029"),  # line/paragraph separators
    ("\u202egpj.exe", "\\u202egpj.exe"),  # right-to-left override
    ("\u2066isolate\u2069", "\\u2066isolate\\u2069"),
])
def test_control_characters_are_escaped(text, shown):
    assert printable(text) == shown
    assert printable(text).isprintable()


@pytest.mark.parametrize("text", ["airplane", "chat noir", "Ü-Bahn", "猫", "кошка", "قطة",
                                  "🐱", "👩\u200d👩\u200d👧", "a b\u00a0c", "C:\\data\\n", ""])
def test_ordinary_unicode_is_left_alone(text):
    assert printable(text) == text

"""Each model's options as a dataclass: names checked against its fields, values by ``validate``.

Options arrive as JSON-like values (``--model-opt``, config files, checkpoints), so sequences
may be lists or tuples and numbers are checked for their type as well as their range.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any, ClassVar, Self

from hfsnet.models.errors import ModelOptionError

# Bounds that keep even a build on the meta device (where the size bound is measured) fast.
MAX_LAYERS = 1000
MAX_STAGES = 16


class ModelOptions:
    """Base of every model's options dataclass.

    ``bounded``: whether :func:`hfsnet.models.create_model` measures the parameter count on the
    meta device before building (off for networks hfsnet does not own). ``adapt_defaults``:
    options ``hfsnet adapt`` sets when the user does not (written into the run's checkpoint like
    any option given, so a later change of these defaults never changes a saved model).
    ``adapt_min_side``: the side ``hfsnet adapt`` upsamples smaller images to when
    ``--image-size`` is not given (None: the data's own side).
    """

    bounded: ClassVar[bool] = True
    adapt_defaults: ClassVar[Mapping[str, Any]] = {}
    adapt_min_side: ClassVar[int | None] = None

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]  # type: ignore[arg-type]

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> Self:
        """The options ``options`` names, checked: unknown names and bad values are refused."""
        if not isinstance(options, Mapping):
            raise ModelOptionError(f"options: expected a mapping of option names to values, got "
                                   f"{type(options).__name__}")
        valid = cls.names()
        for key in options:
            if key not in valid:
                raise unknown_option(key, valid)
        made = cls(**options)
        made.validate()
        return made

    def validate(self) -> None:
        """Raise :class:`ModelOptionError` for a value out of range."""


def unknown_option(key: object, valid: Sequence[str]) -> ModelOptionError:
    close = difflib.get_close_matches(str(key), valid, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return ModelOptionError(f"unknown option {key!r}.{hint} Valid options: {', '.join(valid)}")


def refuse(name: str, expected: str, value: object) -> ModelOptionError:
    return ModelOptionError(f"option {name!r}: expected {expected}, got {value!r}")


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def check_int(name: str, value: object, *, minimum: int = 1) -> None:
    if not is_int(value) or value < minimum:  # type: ignore[operator]
        raise refuse(name, f"an integer >= {minimum}", value)


def check_ints(name: str, value: object, *, minimum: int = 1,
               lengths: Sequence[int] | None = None, max_length: int | None = None) -> None:
    """A list of integers >= ``minimum``, of one of ``lengths`` (or 1..``max_length``)."""
    ok = (isinstance(value, (list, tuple)) and all(is_int(v) and v >= minimum for v in value))
    if lengths is not None:
        ok = ok and len(value) in lengths  # type: ignore[arg-type]
        count = " or ".join(map(str, sorted(set(lengths))))
    else:
        ok = ok and 1 <= len(value) <= (max_length or math.inf)  # type: ignore[arg-type]
        count = f"1 to {max_length}" if max_length else "one or more"
    if not ok:
        raise refuse(name, f"a list of {count} integers >= {minimum}", value)


def check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise refuse(name, "true or false", value)


def check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        raise refuse(name, f"one of {', '.join(choices)}", value)


def check_fraction(name: str, value: object) -> None:
    """A dropout rate: in [0, 1)."""
    if not is_number(value) or not 0 <= value < 1:  # type: ignore[operator]
        raise refuse(name, "a number in [0, 1)", value)


def check_positive(name: str, value: object) -> None:
    if not is_number(value) or value <= 0:  # type: ignore[operator]
        raise refuse(name, "a finite number > 0", value)


def check_image_size(value: object) -> None:
    if value is not None:
        check_int("image_size", value)

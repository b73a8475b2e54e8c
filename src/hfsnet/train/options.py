"""Field metadata for option dataclasses: help text, the values a field accepts, its flag.

A field declared with :func:`option` carries an :class:`Option` in its metadata, so one line
declares a setting everywhere: ``hfsnet.cli.config_flags`` builds the argparse flag from it (and
checks the value while parsing) and :func:`validate_fields` applies the same check to an instance,
whatever its values came from (flags, a config file, a checkpoint, Python code). Messages name the
flag, or the config key of a field that has none. A field declared without ``option()`` is
neither a flag nor checked.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hfsnet.errors import HfsnetError

OPTION = "hfsnet.option"  # the metadata key


@dataclass(frozen=True)
class Range:
    """An interval a number must lie in; a missing bound is unbounded."""

    low: float | None = None
    high: float | None = None
    low_closed: bool = True
    high_closed: bool = True
    label: str | None = None  # how the interval reads when its bounds would not (2**63)

    def __contains__(self, value: float) -> bool:
        if self.low is not None and (value < self.low or (value == self.low
                                                          and not self.low_closed)):
            return False
        return self.high is None or value < self.high or (value == self.high and self.high_closed)

    def __str__(self) -> str:
        if self.label:
            return self.label
        if self.high is None:
            return f"{'>=' if self.low_closed else '>'} {self.low:g}"
        if self.low is None:
            return f"{'<=' if self.high_closed else '<'} {self.high:g}"
        return (f"in {'[' if self.low_closed else '('}{self.low:g}, "
                f"{self.high:g}{']' if self.high_closed else ')'}")


def at_least(low: float) -> Range:
    return Range(low)


def above(low: float) -> Range:
    return Range(low, low_closed=False)


FRACTION = Range(0, 1, high_closed=False)  # [0, 1)
OPEN_FRACTION = Range(0, 1, low_closed=False, high_closed=False)  # (0, 1)
# 0 <= seed < 2**63: what every consumer accepts (torch's int64 seeds, numpy's SeedSequence).
SEEDS = Range(0, 2**63, high_closed=False, label="in [0, 2**63)")


@dataclass(frozen=True)
class Option:
    """What a field accepts and how the command line spells it.

    ``flag``: True derives ``--`` + the field name with dashes; False means the field is no
    flag (a config key only); a string is the flag itself.
    """

    help: str = ""
    check: Range | None = None
    choices: tuple[str, ...] | None = None
    flag: str | bool = True
    metavar: str | None = None

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is refused, as "must be ...", or None when it is fine (None is: a
        field typed ``X | None`` means "unset" by it)."""
        if value is None:
            return None
        if isinstance(value, float) and not math.isfinite(value):
            return "must be a finite number"
        if self.choices is not None and value not in self.choices:
            return f"must be one of {self.choices}"
        if self.check is not None and value not in self.check:
            return f"must be {self.check}"
        return None


def option(default: Any = dataclasses.MISSING, *,
           default_factory: Callable[[], Any] | Any = dataclasses.MISSING, help: str = "",
           check: Range | None = None, choices: tuple[str, ...] | None = None,
           flag: str | bool = True, metavar: str | None = None) -> Any:
    """A ``dataclasses.field`` carrying an :class:`Option`."""
    spec = Option(help=help, check=check, choices=choices, flag=flag, metavar=metavar)
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={OPTION: spec})


def option_like(cls: type, name: str, default: Any, *, help: str | None = None) -> Any:
    """A field that accepts what ``cls``'s field ``name`` does, under the same flag, with its own
    default (and help text, when given)."""
    spec = option_of(field_named(cls, name))
    if spec is None:
        raise TypeError(f"{cls.__name__}.{name} is not declared with option()")
    if help is not None:
        spec = dataclasses.replace(spec, help=help)
    return dataclasses.field(default=default, metadata={OPTION: spec})


def field_named(cls: type, name: str) -> dataclasses.Field[Any]:
    return next(f for f in dataclasses.fields(cls) if f.name == name)


def option_of(field: dataclasses.Field[Any]) -> Option | None:
    return field.metadata.get(OPTION)


def flag_of(field: dataclasses.Field[Any]) -> str | None:
    """The command-line flag of ``field``, or None for a field that has none."""
    spec = option_of(field)
    if spec is None or spec.flag is False:
        return None
    return "--" + field.name.replace("_", "-") if spec.flag is True else str(spec.flag)


def option_name(field: dataclasses.Field[Any]) -> str:
    """How messages name ``field``: its flag, else its config key."""
    return flag_of(field) or f"{field.name} (config key)"


def value_problem(cls: type, name: str, value: Any) -> str | None:
    """Why ``cls``'s field ``name`` refuses ``value`` (see :meth:`Option.problem`), or None."""
    spec = option_of(field_named(cls, name))
    return spec.problem(value) if spec is not None else None


def validate_fields(instance: Any, error: type[HfsnetError]) -> None:
    """Raise ``error`` naming the first field whose value its :class:`Option` refuses."""
    for field in dataclasses.fields(instance):
        spec = option_of(field)
        value = getattr(instance, field.name)
        problem = spec.problem(value) if spec is not None else None
        if problem:
            raise error(f"{option_name(field)} {problem}, got {value!r}")

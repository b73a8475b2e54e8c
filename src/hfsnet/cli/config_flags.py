"""argparse flags generated from option dataclasses (``hfsnet.train.options``), and back.

:func:`add_config_flags` adds one flag per field declared with ``option()``: the type from the
annotation (``int``, ``float``, ``str``, ``X | None``; a ``bool`` becomes ``--x/--no-x``), the
choices, the help text, and the field's check applied while parsing, so a bad value exits 2 with
one line naming the flag before anything loads. Every default is None, so "not given" stays
distinguishable and :func:`given_values` hands on only what the user typed: recipes, config files
and the dataclass defaults supply the rest.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Collection
from typing import Any

from hfsnet.train.options import Option, flag_of, option_of

_KINDS = {int: "an integer", float: "a number", str: "a string"}


def flag_fields(cls: type) -> list[dataclasses.Field[Any]]:
    """The fields of ``cls`` that have a flag, in declaration order."""
    return [f for f in dataclasses.fields(cls) if flag_of(f) is not None]


def dest_of(field: dataclasses.Field[Any]) -> str:
    """The attribute argparse stores ``field``'s flag under (its own rule: dashes to _)."""
    return str(flag_of(field)).removeprefix("--").replace("-", "_")


def add_config_flags(parser: argparse.ArgumentParser, cls: type, *,
                     only: Collection[str] | None = None,
                     exclude: Collection[str] = ()) -> None:
    """Add the flags of ``cls``'s fields (those named in ``only``, if given, less ``exclude``)."""
    hints = typing.get_type_hints(cls)
    for field in flag_fields(cls):
        if (only is None or field.name in only) and field.name not in exclude:
            _add_flag(parser, field, _base_type(hints[field.name]))


def given_values(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """``cls``'s field values among the parsed ``args``: the flags that were given."""
    values = {}
    for field in flag_fields(cls):
        value = getattr(args, dest_of(field), None)
        if value is not None:
            values[field.name] = value
    return values


def _base_type(hint: Any) -> Any:
    """``int`` for ``int | None``; the hint itself otherwise."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _add_flag(parser: argparse.ArgumentParser, field: dataclasses.Field[Any],
              base: Any) -> None:
    spec = option_of(field) or Option()
    kwargs: dict[str, Any] = {"default": None, "help": spec.help or None}
    if spec.metavar:
        kwargs["metavar"] = spec.metavar
    if base is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif spec.choices is not None:
        kwargs["choices"] = spec.choices
    elif base in _KINDS:
        kwargs["type"] = value_parser(base, spec)
    else:
        raise TypeError(f"{field.name}: no flag for a field of type {base!r}; mark it "
                        "option(flag=False)")
    parser.add_argument(str(flag_of(field)), **kwargs)


def value_parser(base: type, spec: Option) -> Callable[[str], Any]:
    """An argparse ``type``: the text as ``base``, refused (exit 2, naming the flag) unless
    ``spec`` accepts it."""

    def parse(text: str) -> Any:
        try:
            value = base(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {_KINDS[base]}, got {text!r}") from None
        problem = spec.problem(value)
        if problem:
            raise argparse.ArgumentTypeError(f"{problem}, got {text!r}")
        return value

    return parse

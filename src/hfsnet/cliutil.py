"""Pieces every `hfsnet` subcommand shares: common flags, JSON output, the --data default."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from hfsnet.data import DataError


def add_common(parser: argparse.ArgumentParser) -> None:
    """--json and --debug, which every subcommand takes."""
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object as the last line of stdout")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")


def add_threads(parser: argparse.ArgumentParser) -> None:
    """--threads for commands that run a network without a training config."""
    parser.add_argument("--threads", type=positive_int, metavar="N",
                        help="torch threads (default: one per core; 1 is faster when other "
                             "jobs load the machine)")


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def emit(args: argparse.Namespace, payload: dict[str, Any]) -> None:
    """Print ``payload`` as the last stdout line when --json was given."""
    if args.json:
        print(json.dumps(payload))


def data_spec(value: str | None) -> str:
    """--data, else $HFSNET_DATA, else a clear error."""
    spec = value or os.environ.get("HFSNET_DATA")
    if not spec:
        raise DataError("--data: no dataset given (pass --data SPEC or set HFSNET_DATA)")
    return spec


def parse_option(text: str) -> tuple[str, Any]:
    """``key=value`` with the value read as JSON when it parses (numbers, lists, booleans)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.replace("-", "_"), json.loads(raw)
    except json.JSONDecodeError:
        return key.replace("-", "_"), raw

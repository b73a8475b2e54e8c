"""Pieces every `hfsnet` subcommand shares: common flags, JSON output, KEY=VALUE options."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_common(parser: argparse.ArgumentParser) -> None:
    """--json and --debug, which every subcommand takes."""
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object as the last line of stdout")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")


def add_overwrite(parser: argparse.ArgumentParser) -> None:
    """--overwrite for commands that train into a run directory."""
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run already in --out (its files are removed at the new "
                             "run's first save: a run that fails before that leaves them as they "
                             "were)")


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


def out_dir(text: str) -> Path:
    """An argparse type: a directory to write into (it may not exist yet), refused while parsing
    when it names an existing file."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"expected a directory, got the existing file {text!r}")
    return path


def out_file(text: str) -> Path:
    """An argparse type: a file to write (it may exist), refused while parsing when it names a
    directory or lies under an existing file."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"expected a file name, got the directory {text!r}")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise argparse.ArgumentTypeError(f"expected a file name, got {text!r} under the "
                                         f"file {str(parent)!r}")
    return path


def emit(args: argparse.Namespace, payload: dict[str, Any]) -> None:
    """Print ``payload`` as the last stdout line when --json was given (paths as strings)."""
    if args.json:
        print(json.dumps(payload, default=_path_text))


def _path_text(value: object) -> str:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def parse_option(text: str) -> tuple[str, Any]:
    """``key=value`` with the value read as JSON when it parses (numbers, lists, booleans)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.replace("-", "_"), json.loads(raw)
    except json.JSONDecodeError:
        return key.replace("-", "_"), raw

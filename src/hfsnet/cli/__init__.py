"""`hfsnet <command>`: one module per command family, each with ``add_commands(subparsers)``.

``main(argv)`` returns the exit code; it is the one place where errors become exit codes.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from typing import NoReturn

import torch

from hfsnet.cli import adapt, analysis, interop, train, transfer
from hfsnet.errors import HfsnetError
from hfsnet.textutil import printable
from hfsnet.train.allocator import retain_freed_memory
from hfsnet.train.distributed import close_distributed

EXIT_USAGE = 2  # bad input of any kind: argparse's convention
EXIT_BUG = 1
EXIT_SIGINT = 130
FAMILIES = (train, interop, analysis, transfer, adapt)


class UsageError(HfsnetError):
    """A flag argparse refused (unknown, missing, or a value its check rejects)."""


class Parser(argparse.ArgumentParser):
    """argparse, except that a refused flag raises :class:`UsageError` instead of printing the
    usage block and exiting, so it reaches the user as the same one line as every other error."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="hfsnet", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for family in FAMILIES:
        family.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every error ends here as one line on stderr and an exit code: 2 for
    bad input (flags, files, data) and for the operating system refusing a read or write, 1 for
    anything else, which is a bug (``--debug`` shows its traceback)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except UsageError as err:
        return _fail(f"hfsnet: error: {err}", EXIT_USAGE, debug="--debug" in argv)
    except SystemExit as done:  # --help
        return int(done.code or 0)
    args.argv = argv
    python_format, warnings.formatwarning = warnings.formatwarning, _warning_line
    try:
        retain_freed_memory()
        if getattr(args, "threads", None):
            torch.set_num_threads(args.threads)
        func: Callable[[argparse.Namespace], int] = args.func
        code = func(args)
        close_distributed()
        return code
    except KeyboardInterrupt:
        return _fail("hfsnet: interrupted", EXIT_SIGINT, debug=args.debug)
    except HfsnetError as err:
        return _fail(f"hfsnet: error: {err}", EXIT_USAGE, debug=args.debug)
    except OSError as err:
        return _fail(f"hfsnet: error: {_os_error(err)}", EXIT_USAGE, debug=args.debug)
    except MemoryError:
        return _fail("hfsnet: error: out of memory (try a smaller --batch-size or model)",
                     EXIT_USAGE, debug=args.debug)
    except Exception as err:
        return _fail(f"hfsnet: internal error: {type(err).__name__}: {err} (a bug: rerun "
                     "with --debug for the traceback)", EXIT_BUG, debug=args.debug)
    finally:
        warnings.formatwarning = python_format  # main() may be called from Python, e.g. tests


def _os_error(err: OSError) -> str:
    """``PATH: No space left on device``: the file and the errno's meaning."""
    reason = os.strerror(err.errno) if err.errno else str(err)
    names = [str(n) for n in (err.filename, err.filename2) if n is not None]
    return f"{' -> '.join(names)}: {reason}" if names else reason


def _warning_line(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  line: str | None = None) -> str:
    """Warnings as one line the way errors are, not Python's two-line source excerpt."""
    return printable(f"hfsnet: warning: {message}") + "\n"


def _fail(line: str, code: int, *, debug: bool) -> int:
    """Print ``line`` as one line: messages carry names from files (class names, paths), whose
    control characters could forge more lines or rewrite the terminal, so they are escaped."""
    if debug:
        traceback.print_exc()
    print(printable(line), file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())

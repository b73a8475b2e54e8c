"""`hfsnet <command>`: one module per command family, each with ``add_commands(subparsers)``.

``main(argv)`` returns the exit code; it is the one place where errors become exit codes.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable, Sequence

import torch

from hfsnet.cli import analysis, interop, train, transfer
from hfsnet.errors import HfsnetError
from hfsnet.train.distributed import close_distributed

EXIT_USAGE = 2  # bad input of any kind: argparse's convention
FAMILIES = (train, interop, analysis, transfer)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hfsnet", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for family in FAMILIES:
        family.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        code = func(args)
        close_distributed()
        return code
    except HfsnetError as err:
        if args.debug:
            traceback.print_exc()
        print(f"hfsnet: error: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())

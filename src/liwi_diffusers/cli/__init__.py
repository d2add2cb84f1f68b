"""The `liwi` command line: `liwi decompose`, `liwi evaluate`, ...

Each subcommand lives in its own module with ``add_parser(subparsers)`` and ``run(args) -> int``.
Errors the user can fix are raised as `CLIError` and printed as one line, with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .. import __version__

# Subcommand modules, in the order `liwi --help` lists them.
SUBCOMMANDS = ("decompose", "evaluate", "models")


class CLIError(Exception):
    """A problem with the user's input, reported as ``liwi: error: <message>`` and exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="liwi",
        description="LiWi: take photos apart into background, shadow and object layers.",
    )
    parser.add_argument("--version", action="version", version=f"liwi-diffusers {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"{__name__}.{name}")
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except CLIError as error:
        print(f"liwi: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("liwi: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

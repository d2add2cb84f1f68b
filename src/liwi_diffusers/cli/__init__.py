"""The `liwi` command line: `liwi decompose`, `liwi evaluate`, ...

Each subcommand lives in its own module with ``add_parser(subparsers)`` and ``run(args) -> int``.
Errors the user can fix are raised as `CLIError` and printed as one line, with exit status 2.
SIGINT (Ctrl-C) exits with status 130 and SIGTERM with 143, both after removing the temporary
file of an export in progress (an exception unwinds the write).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import threading
from collections.abc import Iterator, Sequence

from .. import __version__
from .._extras import MissingExtraError

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


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM, so that writes in progress unwind and clean up."""


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While inside, SIGTERM raises `Terminated` (once; later SIGTERMs are ignored during cleanup)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def terminate(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with _sigterm_raises():
            return int(args.run(args) or 0)
    except CLIError as error:
        print(f"liwi: error: {error}", file=sys.stderr)
        return 2
    except MissingExtraError as error:  # an optional dependency is not installed: name the extra
        print(f"liwi: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("liwi: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("liwi: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM


if __name__ == "__main__":
    sys.exit(main())

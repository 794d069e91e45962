"""Shared helpers for the ``streamer`` and ``trainer`` command lines."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

from hitstream.errors import HitstreamError


def setup_logging(verbosity: int) -> None:
    """Log to stderr; -v gives DEBUG."""
    level = logging.DEBUG if verbosity > 0 else logging.INFO
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


def run_commands(
    prog: str,
    description: str,
    commands: dict[str, str],
    argv: Sequence[str] | None,
    before_run: Callable[[argparse.Namespace], None] | None = None,
) -> int:
    """Build a sub-command parser from ``{name: module}`` and run the chosen one.

    Each module provides ``HELP`` (one line), ``add_arguments(parser)`` and
    ``run(args) -> int``. Modules are imported only to build the parser, so they must keep
    heavy imports (TensorFlow) inside their functions. ``before_run(args)`` is called once
    the arguments are parsed and logging is set up, before the command runs (e.g. to set
    environment variables that a library reads when it is first imported).
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = {}
    for name, modname in commands.items():
        mod = importlib.import_module(modname)
        modules[name] = mod
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if before_run is not None:
        before_run(args)
    try:
        return int(modules[args.command].run(args) or 0)
    except HitstreamError as exc:
        logging.getLogger(prog).error("%s", exc)
        return 2
    except KeyboardInterrupt:
        return 130

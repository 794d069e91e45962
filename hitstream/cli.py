"""Shared helpers for the ``streamer`` and ``trainer`` command lines."""

from __future__ import annotations

import argparse
import builtins
import dataclasses
import importlib
import inspect
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

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


def default_of(obj: Any, name: str) -> Any:
    """The default that the library gives ``name``: the one source of an option's default.

    ``obj`` is a dataclass (the field's ``default``, or ``default_factory()``) or a function
    or class (the parameter's default in its signature). A dotted ``name`` reads attributes
    of that default: ``default_of(SimConfig, "geometry.distance_m")``. Raises ``TypeError``
    when there is no such field or parameter, or it has no default.
    """
    first, *rest = name.split(".")
    where = getattr(obj, "__qualname__", repr(obj))
    if dataclasses.is_dataclass(obj) and isinstance(obj, type):
        fields = {f.name: f for f in dataclasses.fields(obj)}
        if first not in fields:
            raise TypeError(f"{where} has no field {first!r}")
        field = fields[first]
        if field.default is not dataclasses.MISSING:
            value = field.default
        elif field.default_factory is not dataclasses.MISSING:
            value = field.default_factory()
        else:
            raise TypeError(f"field {first!r} of {where} has no default")
    else:
        parameters = inspect.signature(obj).parameters
        if first not in parameters:
            raise TypeError(f"{where} has no parameter {first!r}")
        value = parameters[first].default
        if value is inspect.Parameter.empty:
            raise TypeError(f"parameter {first!r} of {where} has no default")
    for part in rest:
        value = getattr(value, part)
    return value


def show_default(value: Any) -> str:
    """A default as a help text shows it: ``1`` for 1.0, ``5e-4`` for 0.0005 (the shorter
    of the plain and the exponent form), sequences comma-separated, ``str()`` otherwise."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        plain = f"{value:g}"
        mantissa, _, exponent = f"{value:e}".partition("e")
        short = f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
        return short if len(short) < len(plain) else plain
    if isinstance(value, tuple | list):
        return ",".join(show_default(v) for v in value)
    return str(value)


def add_option(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    library: Any,
    name: str,
    help: str = "",
    *,
    flag: str | Sequence[str] | None = None,
    type: Callable[[str], Any] | None = None,
    shown: str | None = None,
    **kwargs: Any,
) -> argparse.Action:
    """Add the option whose default is ``default_of(library, name)``.

    ``flag`` (one or several) defaults to ``--name`` with ``-`` for ``_``; ``type`` to that
    of an int or float default. A tuple or list default becomes the comma-separated string
    the command splits again. ``help`` gets ``[default]`` (:func:`show_default`) appended, or
    ``[shown]`` (``{}`` in it stands for the default; ``""`` appends nothing). Other keywords
    go to ``add_argument``.
    """
    default = default_of(library, name)
    if isinstance(default, tuple | list):
        default = show_default(default)
    if type is None and isinstance(default, int | float) and not isinstance(default, bool):
        type = builtins.type(default)
    if type is not None:
        kwargs["type"] = type
    text = show_default(default) if shown is None else shown.format(show_default(default))
    if text:
        help = f"{help} [{text}]" if help else f"[{text}]"
    flags = [flag] if isinstance(flag, str) else flag or ["--" + name.replace("_", "-")]
    return parser.add_argument(*flags, default=default, help=help, **kwargs)


def build_parser(
    prog: str, description: str, commands: dict[str, str]
) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The parser of ``prog`` and its sub-parsers by command name (see :func:`run_commands`)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parsers = {}
    for name, modname in commands.items():
        mod = importlib.import_module(modname)
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        parsers[name] = p
    return parser, parsers


def run_commands(
    prog: str,
    description: str,
    commands: dict[str, str],
    argv: Sequence[str] | None,
    before_run: Callable[[argparse.Namespace], None] | None = None,
) -> int:
    """Build a sub-command parser from ``{name: module}`` and run the chosen one.

    Each module provides ``HELP`` (one line), ``add_arguments(parser)`` (defaults read from
    the library it calls, with :func:`default_of`) and ``run(args) -> int``. Modules are
    imported only to build the parser, so they must keep heavy imports (TensorFlow) inside
    their functions. ``before_run(args)`` is called once the arguments are parsed and logging
    is set up, before the command runs (e.g. to set environment variables that a library
    reads when it is first imported).
    """
    parser, _ = build_parser(prog, description, commands)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if before_run is not None:
        before_run(args)
    try:
        return int(importlib.import_module(commands[args.command]).run(args) or 0)
    except HitstreamError as exc:
        logging.getLogger(prog).error("%s", exc)
        return 2
    except KeyboardInterrupt:
        return 130

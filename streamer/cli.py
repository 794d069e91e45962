"""``streamer`` command line: ``serve`` (classify a feed) and ``replay`` (serve an HDF5 run)."""

from __future__ import annotations

from collections.abc import Sequence

from hitstream.cli import run_commands

COMMANDS = {
    "serve": "streamer.serve",
    "replay": "streamer.replay",
    "demo": "streamer.demo",
}


def main(argv: Sequence[str] | None = None) -> int:
    return run_commands("streamer", __doc__ or "", COMMANDS, argv)

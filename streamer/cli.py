"""``streamer`` command line: ``serve`` (classify a feed), ``replay`` (serve an HDF5 run),
``demo``, ``index`` (recover a killed streamer's files, rebuild the run index) and ``classify``
(re-classify archived runs on Dask)."""

from __future__ import annotations

from collections.abc import Sequence

from hitstream.cli import run_commands

COMMANDS = {
    "serve": "streamer.serve",
    "replay": "streamer.replay",
    "demo": "streamer.demo",
    "index": "streamer.index_cmd",
    "classify": "streamer.classify_cmd",
}


def main(argv: Sequence[str] | None = None) -> int:
    return run_commands("streamer", __doc__ or "", COMMANDS, argv)

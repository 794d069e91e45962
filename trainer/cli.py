"""``trainer`` command line: simulate runs, build template banks, train, evaluate, export."""

from __future__ import annotations

from collections.abc import Sequence

from hitstream.cli import run_commands

COMMANDS = {
    "simulate": "trainer.commands.simulate",
    "train": "trainer.commands.train",
    "templates": "trainer.commands.templates",
    "rank": "trainer.commands.rank",
    "build-default": "trainer.commands.build_default",
    "export": "trainer.commands.export",
    "evaluate": "trainer.commands.evaluate",
    "finetune": "trainer.commands.finetune",
    "label": "trainer.commands.label",
}


def main(argv: Sequence[str] | None = None) -> int:
    return run_commands("trainer", __doc__ or "", COMMANDS, argv)

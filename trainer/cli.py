"""``trainer`` command line: simulate runs, build template banks, train, evaluate, export."""

from __future__ import annotations

from collections.abc import Sequence

from streamer.cli_util import run_commands

COMMANDS = {
    "simulate": "trainer.simulate_cli",
    "train": "trainer.train_cli",
    "templates": "trainer.templates_cli",
    "rank": "trainer.rank_cli",
    "build-default": "trainer.build_default_cli",
    "export": "trainer.export_cli",
    "evaluate": "trainer.evaluate_cli",
    "finetune": "trainer.finetune_cli",
    "label": "trainer.label_cli",
}


def main(argv: Sequence[str] | None = None) -> int:
    return run_commands("trainer", __doc__ or "", COMMANDS, argv)

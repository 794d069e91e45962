"""``trainer build-default``: the one reproducible command for ``models/default/``.

See :mod:`trainer.model.build_default` for the runs, the training and the export.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from hitstream.cli import add_option, default_of
from trainer.model.build_default import BUILD_ARCHITECTURES, DEFAULT_ARCHITECTURE

HELP = "build the shipped default model bundle (simulate, train compact, evaluate, export)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from trainer.model.build_default import build_default

    add_option(p, build_default, "out", "bundle directory", type=Path)
    p.add_argument("--force", action="store_true", help="replace an existing bundle")
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny runs and 2 epochs: a smoke test, not a useful model",
    )
    add_option(p, build_default, "workers", "simulation processes")
    add_option(
        p,
        build_default,
        "architecture",
        "fine: the default bundle (with template outputs); compact: the same without "
        "the detail channels; fast: the fast CPU bundle",
        choices=BUILD_ARCHITECTURES,
        shown="",
    )
    name = default_of(build_default, "name")
    p.add_argument("--name", help=f"bundle name [{name}, or the architecture's name]")


def run(args: argparse.Namespace) -> int:
    from trainer.model.build_default import FULL, QUICK, build_default, summary_lines

    t0 = time.perf_counter()
    name = args.name or (
        default_of(build_default, "name")
        if args.architecture == DEFAULT_ARCHITECTURE
        else args.architecture
    )
    metrics = build_default(
        args.out,
        force=args.force,
        plan=QUICK if args.quick else FULL,
        workers=args.workers,
        name=name,
        architecture=args.architecture,
    )
    print("\n".join(summary_lines(args.out, metrics, time.perf_counter() - t0)))
    return 0

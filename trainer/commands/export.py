"""``trainer export``: re-export a bundle's Keras model, e.g. with a template bank added.

See :mod:`trainer.model.reexport`: the manifest's fields are carried over, the graph is built
again (with the template matcher when ``--bank`` is given), the weights are unchanged.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "re-export a bundle's model.keras as a new bundle (optionally with a template bank)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--keras", type=Path, required=True, help="model.keras of a bundle (its manifest is reused)"
    )
    p.add_argument("--bank", type=Path, help="polar template bank (trainer templates) to include")
    p.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    p.add_argument("--name", help="bundle name [the source bundle's]")
    p.add_argument("--force", action="store_true", help="replace an existing bundle")


def run(args: argparse.Namespace) -> int:
    from hitstream.bundle import load_bundle
    from trainer.model.reexport import reexport

    path = reexport(args.keras, args.out, args.bank, args.name, args.force)
    b = load_bundle(path)
    print(f"wrote {path} ({b.label}); outputs: {', '.join(b.manifest['outputs'])}", flush=True)
    return 0

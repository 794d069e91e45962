"""``trainer rank``: sort the frames of a run by their distance to a template bank."""

from __future__ import annotations

import argparse
from pathlib import Path

from hitstream.cli import add_option
from trainer.commands.args import add_run

HELP = "rank every frame of a run by its template distance (CSV + picture grids)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from trainer.templates.rank import rank_to_files

    add_run(p, rank_to_files)
    p.add_argument("--bank", type=Path, required=True, help="template bank (trainer templates)")
    p.add_argument("--out", type=Path, help="output directory [./<RUN stem>_rank]")
    add_option(p, rank_to_files, "top", "frames per picture grid")
    add_option(p, rank_to_files, "chunk", "frames read and scored at once")
    p.add_argument(
        "--labels-out",
        type=Path,
        help="also write the --top best frames as a labels CSV (class single)",
    )
    p.add_argument("--run-name", help="'run' column of --labels-out [RUN file name]")
    p.add_argument("--no-png", action="store_true", help="skip the picture grids")
    p.add_argument(
        "--include-templates",
        action="store_true",
        help="also rank the frames the bank was built from (left out by default)",
    )


def run(args: argparse.Namespace) -> int:
    from trainer.templates.rank import rank_to_files

    written = rank_to_files(
        args.run,
        args.dataset,
        args.bank,
        args.out,
        top=args.top,
        chunk=args.chunk,
        labels_out=args.labels_out,
        run_name=args.run_name,
        png=not args.no_png,
        include_templates=args.include_templates,
        photon_unit=args.photon_unit,
    )
    for p in written:
        print(f"wrote {p}", flush=True)
    return 0

"""``trainer rank``: sort the frames of a run by their distance to a template bank."""

from __future__ import annotations

import argparse
from pathlib import Path

from hitstream.cli import default_of
from trainer.commands.args import add_photon_unit

HELP = "rank every frame of a run by its template distance (CSV + picture grids)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from trainer.templates.rank import rank_to_files

    def d(name: str) -> object:
        return default_of(rank_to_files, name)

    p.add_argument("run", type=Path, help="HDF5/CXI file with the frames (RUN.h5)")
    p.add_argument("--dataset", required=True, help="path of the (N, H, W) frames dataset")
    add_photon_unit(p, rank_to_files)
    p.add_argument("--bank", type=Path, required=True, help="template bank (trainer templates)")
    p.add_argument("--out", type=Path, help="output directory [./<RUN stem>_rank]")
    p.add_argument(
        "--top", type=int, default=d("top"), help=f"frames per picture grid [{d('top')}]"
    )
    p.add_argument(
        "--chunk",
        type=int,
        default=d("chunk"),
        help=f"frames read and scored at once [{d('chunk')}]",
    )
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

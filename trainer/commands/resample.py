"""``trainer resample``: an archived run of a real detector onto a bundle's q grid."""

from __future__ import annotations

import argparse
from pathlib import Path

from hitstream.cli import add_option

HELP = "resample a real detector's run (modules) onto a bundle's q grid, as the streamer does"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from hitstream.resample_run import resample_to_file

    p.add_argument("run", type=Path, help="HDF5 file with the detector's frames")
    p.add_argument("--dataset", required=True, help="(N, modules, ss, fs) or (N, modules*ss, fs)")
    p.add_argument("--config", type=Path, required=True,
                   help="a streamer config file: its [detector] section")  # fmt: skip
    p.add_argument("--model", type=Path, required=True,
                   help="bundle whose grid to resample onto (e.g. models/default)")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="output run file (OUT.h5)")
    add_option(p, resample_to_file, "out_dataset", "dataset path of the output")
    add_option(p, resample_to_file, "photon_unit", "one photon in the file's units (ADU, keV)")


def run(args: argparse.Namespace) -> int:
    from hitstream.resample_run import resample_to_file

    out = resample_to_file(
        args.run, args.dataset, args.config, args.model, args.out,
        out_dataset=args.out_dataset, photon_unit=args.photon_unit,
    )  # fmt: skip
    print(f"wrote {out}")
    return 0

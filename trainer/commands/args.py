"""Command-line arguments that several ``trainer`` commands share."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_labelled_runs(p: argparse.ArgumentParser) -> None:
    """``--data`` (repeatable), ``--dataset`` and ``--labels``: labelled frames of HDF5 runs."""
    p.add_argument(
        "--data", type=Path, action="append", required=True, help="HDF5 run (repeatable)"
    )
    p.add_argument("--dataset", required=True, help="path of the (N, H, W) frames dataset")
    p.add_argument(
        "--labels", type=Path, required=True, help="labels (CSV run,index,class; JSON; HDF5)"
    )
    add_photon_unit(p)


def add_photon_unit(p: argparse.ArgumentParser) -> None:
    """``--photon-unit``: one photon's value in the files' units (frames are read in photons)."""
    p.add_argument(
        "--photon-unit",
        type=float,
        default=1.0,
        help="one photon in the files' units, e.g. ADU per photon; frames are divided by it "
        "[1: the files hold photons]. A warning says when the frames do not look like it",
    )

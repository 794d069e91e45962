"""Command-line arguments that several ``trainer`` commands share.

Their defaults come from the library function (or options dataclass) that the command
calls: pass it as ``library`` (see :func:`hitstream.cli.default_of`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hitstream.cli import default_of, show_default


def add_run(p: argparse.ArgumentParser, library: Any) -> None:
    """``RUN`` (one HDF5/CXI file), ``--dataset`` and ``--photon-unit``: the frames of a run."""
    p.add_argument("run", type=Path, help="HDF5/CXI file with the frames (RUN.h5)")
    p.add_argument("--dataset", required=True, help="path of the (N, H, W) frames dataset")
    add_photon_unit(p, library)


def add_labelled_runs(p: argparse.ArgumentParser, library: Any) -> None:
    """``--data`` (repeatable), ``--dataset`` and ``--labels``: labelled frames of HDF5 runs."""
    p.add_argument(
        "--data", type=Path, action="append", required=True, help="HDF5 run (repeatable)"
    )
    p.add_argument("--dataset", required=True, help="path of the (N, H, W) frames dataset")
    p.add_argument(
        "--labels", type=Path, required=True, help="labels (CSV run,index,class; JSON; HDF5)"
    )
    add_photon_unit(p, library)


def add_photon_unit(p: argparse.ArgumentParser, library: Any) -> None:
    """``--photon-unit``: one photon's value in the files' units (frames are read in photons);
    its default is ``library``'s ``photon_unit``."""
    default = default_of(library, "photon_unit")
    p.add_argument(
        "--photon-unit",
        type=float,
        default=default,
        help="one photon in the files' units, e.g. ADU per photon; frames are divided by it "
        f"[{show_default(default)}: the files hold photons]. A warning says when the frames do "
        "not look like it",
    )

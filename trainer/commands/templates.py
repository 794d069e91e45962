"""``trainer templates``: build a template bank from the frames of a run labelled single."""

from __future__ import annotations

import argparse
from pathlib import Path

from hitstream.cli import add_option
from trainer.commands.args import add_run

HELP = "build a template bank (HDF5) from the frames of a run labelled single"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from trainer.templates.features import MODES, PolarConfig
    from trainer.templates.from_run import build_bank_from_run

    lib = build_bank_from_run
    add_run(p, lib)
    p.add_argument(
        "--labels", type=Path, required=True, help="labels (CSV run,index,class; JSON; HDF5)"
    )
    add_option(p, lib, "cls", "class to take", flag="--class", dest="cls")
    add_option(p, lib, "mode", "matching mode", choices=MODES)
    p.add_argument("--out", type=Path, required=True, help="template bank to write (BANK.h5)")
    add_option(p, lib, "max_frames", "use at most N frames", flag="--max", metavar="N", shown="all")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bank")
    g = p.add_argument_group("polar mode")
    add_option(g, PolarConfig, "n_angles", "cells over 180°")
    add_option(g, PolarConfig, "n_harmonics", "angular harmonics", flag="--harmonics")
    add_option(
        g,
        PolarConfig,
        "linear_weight",
        "weight of the linear channel; the sqrt channel gets the rest",
    )
    add_option(g, PolarConfig, "smooth_px", "sqrt channel smoothing")
    add_option(g, PolarConfig, "r_min_px", "inner radius")
    add_option(g, PolarConfig, "r_max_px", "outer radius", shown="frame edge")


def run(args: argparse.Namespace) -> int:
    from trainer.templates.features import PolarConfig
    from trainer.templates.from_run import build_bank_from_run

    polar = PolarConfig(
        r_min_px=args.r_min_px,
        r_max_px=args.r_max_px,
        n_angles=args.n_angles,
        n_harmonics=args.harmonics,
        n_shifts=max(PolarConfig.n_shifts, 2 * args.harmonics),
        linear_weight=args.linear_weight,
        smooth_px=args.smooth_px,
    )
    bank = build_bank_from_run(
        args.run,
        args.dataset,
        args.labels,
        args.out,
        cls=args.cls,
        mode=args.mode,
        max_frames=args.max,
        polar=polar,
        photon_unit=args.photon_unit,
        overwrite=args.overwrite,
    )
    print(f"wrote {args.out}: {len(bank)} templates, mode {args.mode}", flush=True)
    return 0

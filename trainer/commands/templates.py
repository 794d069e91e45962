"""``trainer templates``: build a template bank from the frames of a run labelled single."""

from __future__ import annotations

import argparse
from pathlib import Path

from hitstream.cli import default_of
from trainer.commands.args import add_photon_unit

HELP = "build a template bank (HDF5) from the frames of a run labelled single"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from trainer.templates.features import MODES, PolarConfig
    from trainer.templates.from_run import build_bank_from_run

    def d(name: str) -> object:
        return default_of(build_bank_from_run, name)

    def polar(name: str) -> object:
        return default_of(PolarConfig, name)

    p.add_argument("run", type=Path, help="HDF5/CXI file with the frames (RUN.h5)")
    p.add_argument("--dataset", required=True, help="path of the (N, H, W) frames dataset")
    add_photon_unit(p, build_bank_from_run)
    p.add_argument(
        "--labels", type=Path, required=True, help="labels (CSV run,index,class; JSON; HDF5)"
    )
    p.add_argument("--class", dest="cls", default=d("cls"), help=f"class to take [{d('cls')}]")
    p.add_argument("--mode", choices=MODES, default=d("mode"), help=f"matching mode [{d('mode')}]")
    p.add_argument("--out", type=Path, required=True, help="template bank to write (BANK.h5)")
    p.add_argument(
        "--max", type=int, default=d("max_frames"), metavar="N", help="use at most N frames [all]"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing bank")
    g = p.add_argument_group("polar mode")
    g.add_argument(
        "--n-angles",
        type=int,
        default=polar("n_angles"),
        help=f"cells over 180° [{polar('n_angles')}]",
    )
    g.add_argument(
        "--harmonics",
        type=int,
        default=polar("n_harmonics"),
        help=f"angular harmonics [{polar('n_harmonics')}]",
    )
    g.add_argument(
        "--linear-weight",
        type=float,
        default=polar("linear_weight"),
        help="weight of the linear channel; the sqrt channel gets the rest "
        f"[{polar('linear_weight')}]",
    )
    g.add_argument(
        "--smooth-px",
        type=float,
        default=polar("smooth_px"),
        help=f"sqrt channel smoothing [{polar('smooth_px')}]",
    )
    g.add_argument(
        "--r-min-px",
        type=float,
        default=polar("r_min_px"),
        help=f"inner radius [{polar('r_min_px')}]",
    )
    g.add_argument(
        "--r-max-px", type=float, default=polar("r_max_px"), help="outer radius [frame edge]"
    )


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

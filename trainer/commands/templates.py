"""``trainer templates``: build a template bank from the frames of a run labelled single."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from hitstream.errors import InputDataError
from trainer.commands.args import add_photon_unit

HELP = "build a template bank (HDF5) from the frames of a run labelled single"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from trainer.templates.bank import MODES, PolarConfig

    d = PolarConfig()
    p.add_argument("run", type=Path, help="HDF5/CXI file with the frames (RUN.h5)")
    p.add_argument("--dataset", required=True, help="path of the (N, H, W) frames dataset")
    add_photon_unit(p)
    p.add_argument(
        "--labels", type=Path, required=True, help="labels (CSV run,index,class; JSON; HDF5)"
    )
    p.add_argument("--class", dest="cls", default="single", help="class to take [single]")
    p.add_argument("--mode", choices=MODES, default="polar", help="matching mode [polar]")
    p.add_argument("--out", type=Path, required=True, help="template bank to write (BANK.h5)")
    p.add_argument("--max", type=int, default=0, metavar="N", help="use at most N frames [all]")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bank")
    g = p.add_argument_group("polar mode")
    g.add_argument(
        "--n-angles", type=int, default=d.n_angles, help=f"cells over 180° [{d.n_angles}]"
    )
    g.add_argument(
        "--harmonics", type=int, default=d.n_harmonics, help=f"angular harmonics [{d.n_harmonics}]"
    )
    g.add_argument(
        "--linear-weight",
        type=float,
        default=d.linear_weight,
        help=f"weight of the linear channel; the sqrt channel gets the rest [{d.linear_weight}]",
    )
    g.add_argument(
        "--smooth-px",
        type=float,
        default=d.smooth_px,
        help=f"sqrt channel smoothing [{d.smooth_px}]",
    )
    g.add_argument(
        "--r-min-px", type=float, default=d.r_min_px, help=f"inner radius [{d.r_min_px}]"
    )
    g.add_argument("--r-max-px", type=float, default=d.r_max_px, help="outer radius [frame edge]")


def labelled_indices(labels: Path, run: Path, cls: str) -> np.ndarray:
    """Frame indices of ``run`` labelled ``cls`` in ``labels`` (sorted, unique)."""
    from hitstream.labels import read_labels
    from trainer.data.ingest import match_run

    table = read_labels(labels)
    rows = [k for k, name in enumerate(table.run.tolist()) if match_run(name, [run]) == 0]
    if not rows:
        runs = ", ".join(table.runs()[:5]) or "none"
        raise InputDataError(f"{labels}: no labels for run {run.name} (runs named: {runs})")
    mine = table.take(np.asarray(rows))
    idx = mine.index[mine.label == cls]
    if len(idx) == 0:
        raise InputDataError(
            f"{labels}: no frames of {run.name} labelled {cls!r} (classes: {mine.counts()})"
        )
    return np.unique(idx)


def run(args: argparse.Namespace) -> int:
    import logging

    from trainer.data.ingest import check_units, open_run, read_frames
    from trainer.templates.bank import PolarConfig, build_bank, save_bank

    log = logging.getLogger("trainer.templates.bank")
    t0 = time.perf_counter()
    idx = labelled_indices(args.labels, args.run, args.cls)
    if args.max > 0:
        idx = idx[: args.max]
    polar = PolarConfig(
        r_min_px=args.r_min_px,
        r_max_px=args.r_max_px,
        n_angles=args.n_angles,
        n_harmonics=args.harmonics,
        n_shifts=max(PolarConfig.n_shifts, 2 * args.harmonics),
        linear_weight=args.linear_weight,
        smooth_px=args.smooth_px,
    )
    with open_run(args.run, args.dataset, photon_unit=args.photon_unit) as src:
        frames = read_frames(src, idx)
        check_units(src, frames)
    bank = build_bank(
        frames, mode=args.mode, source_run=args.run.name, source_index=idx, polar=polar
    )
    bank.attrs.update({"source_file": str(args.run), "source_dataset": args.dataset})
    save_bank(bank, args.out, overwrite=args.overwrite)
    log.info(
        "%s: %d %s templates (%s mode) from %s in %.1f s",
        args.out,
        len(bank),
        args.cls,
        args.mode,
        args.run.name,
        time.perf_counter() - t0,
    )
    print(f"wrote {args.out}: {len(bank)} templates, mode {args.mode}", flush=True)
    return 0

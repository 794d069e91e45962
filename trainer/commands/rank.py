"""``trainer rank``: sort the frames of a run by their distance to a template bank."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from trainer.commands.args import add_photon_unit

HELP = "rank every frame of a run by its template distance (CSV + picture grids)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="HDF5/CXI file with the frames (RUN.h5)")
    p.add_argument("--dataset", required=True, help="path of the (N, H, W) frames dataset")
    add_photon_unit(p)
    p.add_argument("--bank", type=Path, required=True, help="template bank (trainer templates)")
    p.add_argument("--out", type=Path, help="output directory [./<RUN stem>_rank]")
    p.add_argument("--top", type=int, default=64, help="frames per picture grid [64]")
    p.add_argument("--chunk", type=int, default=256, help="frames read and scored at once [256]")
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
    import logging

    from hitstream.errors import ConfigError, OutputError
    from trainer.templates.bank import load_bank
    from trainer.templates.rank import rank_run, ranking_grids, write_ranking_csv, write_top_labels

    log = logging.getLogger("trainer.templates.rank")
    if args.top < 1 or args.chunk < 1:
        raise ConfigError("--top and --chunk must be >= 1")
    out = args.out or Path(f"{args.run.stem}_rank")
    bank = load_bank(args.bank)
    t0 = time.perf_counter()
    ranking = rank_run(
        args.run,
        args.dataset,
        bank,
        chunk=args.chunk,
        progress=True,
        include_templates=args.include_templates,
        photon_unit=args.photon_unit,
    )
    dt = time.perf_counter() - t0
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{out}: cannot create the output directory ({exc.strerror})") from exc
    csv_path = write_ranking_csv(out / "ranking.csv", ranking)
    written = [csv_path]
    if not args.no_png:
        written += ranking_grids(out, args.run, args.dataset, ranking, args.top)
    if args.labels_out:
        written.append(
            write_top_labels(args.labels_out, ranking, args.run_name or args.run.name, args.top)
        )
    log.info(
        "%d frames ranked against %d templates (%s) in %.1f s (%.0f frames/s)",
        len(ranking),
        len(bank),
        bank.mode,
        dt,
        len(ranking) / max(dt, 1e-9),
    )
    for p in written:
        print(f"wrote {p}", flush=True)
    return 0

"""``trainer simulate``: write a simulated SPI run (one HDF5 dataset + a labels CSV)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from hitstream.compression import COMPRESSIONS
from hitstream.errors import ConfigError

if TYPE_CHECKING:
    from hitstream.simulate import SimConfig

HELP = "simulate single-particle-imaging frames (CXIDB-58-like) into HDF5 + labels CSV"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("output", type=Path, help="HDF5 file to write (OUT.h5)")
    p.add_argument("--frames", type=int, required=True, metavar="N", help="number of frames N")
    p.add_argument("--seed", type=int, default=0, help="run seed; frame i depends on (seed, i)")
    p.add_argument("--dataset", default="data", help="dataset path inside the file [data]")
    p.add_argument("--labels", type=Path, help="labels CSV [OUT stem + .labels.csv]")
    p.add_argument("--run-name", help="value of the CSV 'run' column [OUT file name]")
    p.add_argument(
        "--fractions",
        metavar="CLASS=F,...",
        help="class fractions, e.g. single=0.3,multiple=0.2,empty=0.3,other=0.2 "
        "(classes left out get 0)",
    )
    p.add_argument(
        "--photons", metavar="LO,HI", help="LO,HI: 5-95%% signal photons of a reference single hit"
    )
    p.add_argument(
        "--radius-nm", metavar="LO,HI", help="LO,HI: volume-equivalent particle radius (nm)"
    )
    p.add_argument("--background", metavar="LO,HI", help="LO,HI: background photons per frame")
    p.add_argument("--hot-pixels", type=float, help="mean hot pixels per frame")
    p.add_argument("--jitter-px", type=float, help="beam-centre jitter (std, pixels)")
    p.add_argument("--read-noise", type=float, help="Gaussian read noise (std, photons)")
    p.add_argument("--distance-mm", type=float, help="detector distance (mm) [586]")
    p.add_argument("--wavelength-A", type=float, help="wavelength (angstrom) [7.75]")
    p.add_argument("--pixel-mm", type=float, help="pixel size (mm) [0.3]")
    p.add_argument("--hole-px", type=float, help="radius of the central hole (pixels)")
    p.add_argument("--gap-rows", type=int, help="rows of the gap between detector halves")
    p.add_argument(
        "--compression",
        choices=COMPRESSIONS,
        default="gzip",
        help="HDF5 filter [gzip: readable everywhere]; bitshuffle-lz4, lz4 and zstd (fast to "
        "read, for replay) need 'import hdf5plugin'",
    )
    p.add_argument("--chunk", type=int, default=256, help="frames generated per write [256]")
    p.add_argument("--no-truth", action="store_true", help="CSV with run,index,class only")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--png", type=Path, help="also write a montage of example frames per class")


def _pair(text: str, name: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--{name} must be LO,HI (two numbers), got {text!r}") from None
    return lo, hi


def _fractions(text: str) -> tuple[float, ...]:
    from hitstream.simulate import SIM_CLASSES

    values = dict.fromkeys(SIM_CLASSES, 0.0)
    for item in text.split(","):
        name, _, value = item.partition("=")
        name = name.strip()
        if name not in values:
            raise ConfigError(
                f"--fractions: unknown class {name!r}; choose from {', '.join(SIM_CLASSES)}"
            )
        try:
            values[name] = float(value)
        except ValueError:
            raise ConfigError(f"--fractions: {item!r} is not CLASS=NUMBER") from None
    return tuple(values.values())


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """SimConfig from the command-line options (defaults where an option is absent)."""
    from hitstream.simulate import SimConfig

    base = SimConfig()
    geo = {}
    for opt, key, scale in (
        ("distance_mm", "distance_m", 1e-3),
        ("wavelength_A", "wavelength_m", 1e-10),
        ("pixel_mm", "pixel_size_m", 1e-3),
        ("hole_px", "hole_radius_px", 1.0),
    ):
        if getattr(args, opt) is not None:
            geo[key] = getattr(args, opt) * scale
    if args.gap_rows is not None:
        geo["gap_rows"] = args.gap_rows
    kw: dict = {"geometry": dataclasses.replace(base.geometry, **geo)}
    if args.fractions:
        kw["fractions"] = _fractions(args.fractions)
    for opt, key in (
        ("photons", "photons"),
        ("radius_nm", "radius_nm"),
        ("background", "background_photons"),
    ):
        if getattr(args, opt):
            kw[key] = _pair(getattr(args, opt), opt.replace("_", "-"))
    for opt, key in (
        ("hot_pixels", "hot_pixels_per_frame"),
        ("jitter_px", "center_jitter_px"),
        ("read_noise", "read_noise_photons"),
    ):
        if getattr(args, opt) is not None:
            kw[key] = getattr(args, opt)
    return SimConfig(**kw)


def run(args: argparse.Namespace) -> int:
    from hitstream.simulate import simulate_to_file

    done = simulate_to_file(
        args.output,
        args.frames,
        args.seed,
        config_from_args(args),
        dataset=args.dataset,
        labels_path=args.labels,
        run_name=args.run_name,
        compression=args.compression,
        chunk=args.chunk,
        truth=not args.no_truth,
        overwrite=args.overwrite,
        montage=args.png,
    )
    per_class = ", ".join(f"{c} {n}" for c, n in done.counts().items())
    n, dt = args.frames, done.seconds
    print(
        f"wrote {n} frames ({per_class}) to {done.path}:/{done.dataset.strip('/')}"
        f", labels {done.labels_path}; {dt:.1f} s, {n / dt:.0f} frames/s",
        flush=True,
    )
    if done.montage is not None:
        print(f"montage {done.montage}", flush=True)
    return 0

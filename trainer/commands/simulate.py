"""``trainer simulate``: write a simulated SPI run (one HDF5 dataset + a labels CSV)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from hitstream.cli import add_option, default_of, show_default
from hitstream.compression import COMPRESSIONS
from hitstream.errors import ConfigError

if TYPE_CHECKING:
    from hitstream.simulate import BeamlineConfig, SimConfig

HELP = "simulate single-particle-imaging frames (CXIDB-58-like) into HDF5 + labels CSV"
# option -> (DetectorGeometry field, the option's unit: metres, or 1 for pixels); the
# defaults are those of SimConfig's geometry
GEOMETRY_OPTIONS = {
    "distance_mm": ("distance_m", 1e-3),
    "wavelength_A": ("wavelength_m", 1e-10),
    "pixel_mm": ("pixel_size_m", 1e-3),
    "hole_px": ("hole_radius_px", 1.0),
}


def geometry_default(option: str) -> float:
    """The default of a geometry option in its unit (SimConfig's geometry, e.g. 586 mm)."""
    from hitstream.simulate import SimConfig

    key, scale = GEOMETRY_OPTIONS[option]
    return float(default_of(SimConfig, f"geometry.{key}")) / scale


def add_arguments(p: argparse.ArgumentParser) -> None:
    from hitstream.simulate import simulate_to_file

    def shown(option: str) -> str:
        return f" [{show_default(geometry_default(option))}]"

    p.add_argument("output", type=Path, help="HDF5 file to write (OUT.h5)")
    p.add_argument("--frames", type=int, required=True, metavar="N", help="number of frames N")
    add_option(p, simulate_to_file, "seed", "run seed; frame i depends on (seed, i)", shown="")
    add_option(p, simulate_to_file, "dataset", "dataset path inside the file")
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
    p.add_argument(
        "--distance-mm", type=float, help="detector distance (mm)" + shown("distance_mm")
    )
    p.add_argument(
        "--wavelength-A", type=float, help="wavelength (angstrom)" + shown("wavelength_A")
    )
    p.add_argument("--pixel-mm", type=float, help="pixel size (mm)" + shown("pixel_mm"))
    p.add_argument("--hole-px", type=float, help="radius of the central hole (pixels)")
    p.add_argument("--gap-rows", type=int, help="rows of the gap between detector halves")
    compression = default_of(simulate_to_file, "compression")
    p.add_argument(
        "--compression",
        choices=COMPRESSIONS,
        default=compression,
        help=f"HDF5 filter [{compression}: readable everywhere]; bitshuffle-lz4, lz4 and "
        "zstd (fast to read, for replay) need 'import hdf5plugin'",
    )
    add_option(p, simulate_to_file, "chunk", "frames generated per write")
    p.add_argument("--no-truth", action="store_true", help="CSV with run,index,class only")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--png", type=Path, help="also write a montage of example frames per class")
    p.add_argument(
        "--detector-config",
        type=Path,
        help="a streamer config file: also render the run onto its [detector]'s pixels "
        "(OUT stem + .detector.h5, modules as the detector sends them) through the "
        "streamer's map",
    )
    from hitstream.simulate import BeamlineConfig, SimConfig

    g = p.add_argument_group(
        "beamline",
        "each run's background and detector (hitstream.simulate.beamline; the README names "
        "every effect's physical source and range)",
    )
    g.add_argument(
        "--beamline",
        choices=BEAMLINE_PRESETS,
        help="none: a plain detector with a little stray light; realistic: the range of real "
        "SPI beamlines (what the shipped bundles train on) [none]",
    )
    g.add_argument(
        "--bg-level",
        metavar="LO,HI",
        help="mean background photons per valid pixel of a run, log-uniform "
        f"[realistic: {show_default(BeamlineConfig.realistic().level)}]",
    )
    g.add_argument(
        "--frames-per-run",
        type=int,
        help="frames per run (each with its own beamline draw; 0: the whole file is one run) "
        f"[{default_of(SimConfig, 'frames_per_run')}]",
    )
    fields = ", ".join(f.name for f in dataclasses.fields(BeamlineConfig))
    g.add_argument(
        "--bg",
        action="append",
        metavar="KEY=VALUE",
        help=f"any other beamline setting (repeatable), e.g. streak_share=0.5 or "
        f"shot_jitter=0,0.3; keys: {fields}",
    )


BEAMLINE_PRESETS = ("none", "realistic")


def _beamline(args: argparse.Namespace) -> BeamlineConfig:
    """The beamline of ``--beamline``, with ``--bg-level`` and ``--bg KEY=VALUE`` on top."""
    from hitstream.simulate import BeamlineConfig

    base = BeamlineConfig.realistic() if args.beamline == "realistic" else BeamlineConfig()
    kw: dict = {}
    if args.bg_level:
        kw["level"] = _pair(args.bg_level, "bg-level")
    known = {f.name: f for f in dataclasses.fields(BeamlineConfig)}
    for item in args.bg or ():
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in known:
            raise ConfigError(f"--bg {item!r}: use KEY=VALUE with KEY one of {', '.join(known)}")
        parts = [v.strip() for v in value.split(",")]
        try:
            numbers = [int(v) if v.lstrip("-").isdigit() else float(v) for v in parts]
        except ValueError:
            raise ConfigError(f"--bg {item!r}: the value must be numbers") from None
        kw[key] = tuple(numbers) if len(numbers) > 1 else numbers[0]
    try:
        return dataclasses.replace(base, **kw)
    except TypeError as exc:
        raise ConfigError(f"--bg: {exc}") from None


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
    for opt, (key, scale) in GEOMETRY_OPTIONS.items():
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
    kw["beamline"] = _beamline(args)
    if args.frames_per_run is not None:
        kw["frames_per_run"] = args.frames_per_run
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
    if args.detector_config is not None:  # the same frames on a real detector's pixels
        from hitstream.resample_run import detector_config_from_toml, render_run

        out = Path(done.path).with_suffix(".detector.h5")
        render_run(
            Path(done.path), done.dataset, detector_config_from_toml(args.detector_config),
            config_from_args(args).geometry, out,
        )  # fmt: skip
        print(f"rendered onto the detector: {out}:/data (frames, modules, ss, fs)", flush=True)
    return 0

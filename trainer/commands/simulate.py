"""``trainer simulate``: write a simulated SPI run (one HDF5 dataset + a labels CSV)."""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hitstream.compression import COMPRESSIONS
from hitstream.errors import ConfigError

if TYPE_CHECKING:
    from hitstream.simulate import SimConfig, SimulatedRun

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
    from tqdm import tqdm

    from hitstream.simulate import (
        SIM_CLASSES,
        RunWriter,
        iter_chunks,
        run_attrs,
        simulate_frames,
        simulate_indices,
    )

    if args.frames < 1:
        raise ConfigError(f"--frames must be >= 1, got {args.frames}")
    if args.seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {args.seed}")
    config = config_from_args(args)
    labels = np.empty(args.frames, np.int8)
    attrs = run_attrs(simulate_frames(0, 0, args.seed, config))
    t0 = time.perf_counter()
    with (
        RunWriter(
            args.output,
            args.frames,
            shape=config.geometry.shape,
            dataset=args.dataset,
            labels_path=args.labels,
            run_name=args.run_name,
            compression=args.compression,
            truth=not args.no_truth,
            overwrite=args.overwrite,
            attrs=attrs,
        ) as writer,
        tqdm(total=args.frames, unit="frame", desc="simulate", disable=None) as bar,
    ):
        for part in iter_chunks(0, args.frames, args.seed, config, chunk=args.chunk):
            labels[part.start : part.start + len(part)] = part.labels
            writer.write(part)
            bar.update(len(part))
    elapsed = time.perf_counter() - t0
    per_class = ", ".join(f"{c} {np.sum(labels == i)}" for i, c in enumerate(SIM_CLASSES))
    print(
        f"wrote {args.frames} frames ({per_class}) to {writer.path}:/{args.dataset.strip('/')}"
        f", labels {writer.labels_path}; {elapsed:.1f} s, {args.frames / elapsed:.0f} frames/s",
        flush=True,
    )
    if args.png:
        picks = np.concatenate([np.flatnonzero(labels == i)[:6] for i in range(len(SIM_CLASSES))])
        sample = simulate_indices(picks, args.seed, config)
        expected = simulate_indices(picks, args.seed, config, noise=False)
        write_montage(args.png, sample, per_class=6, expected=expected)
        print(f"montage {args.png}", flush=True)
    return 0


def write_montage(
    path: str | Path,
    run: SimulatedRun,
    per_class: int = 6,
    expected: SimulatedRun | None = None,
) -> Path:
    """PNG of up to ``per_class`` frames of each class (rows), log scale.

    With ``expected`` (the same frames from ``simulate_frames(..., noise=False)``) each class
    gets a second row with the noise-free intensities.
    """
    import matplotlib

    from hitstream.simulate import OTHER_KINDS

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    picks = [np.flatnonzero(run.labels == i)[:per_class] for i in range(len(run.classes))]
    panels = []  # (row label, source run, indices, noisy?)
    for i, idx in enumerate(picks):
        panels.append((run.classes[i], run, idx, True))
        if expected is not None:
            panels.append((f"{run.classes[i]}\n(noise-free)", expected, idx, False))
    fig, axes = plt.subplots(
        len(panels), per_class, figsize=(2.1 * per_class, 2.2 * len(panels)), squeeze=False
    )
    sub = run.params.get("subclass")
    for r, (name, src, idx, noisy) in enumerate(panels):
        for c in range(per_class):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=11)
            if c >= len(idx):
                ax.set_axis_off()
                continue
            frame = src.frames[idx[c]]
            top = max(float(frame.max()), 1.0)
            lo = 0.5 if noisy else top * 1e-4
            ax.imshow(
                np.maximum(frame, lo),
                norm=LogNorm(vmin=lo, vmax=top),
                cmap="magma",
                interpolation="nearest",
            )
            title = f"{frame.sum():.0f} photons"
            if sub is not None and sub[idx[c]] >= 0:
                title += f", {OTHER_KINDS[sub[idx[c]]]}"
            ax.set_title(title, fontsize=8)
    fig.suptitle(
        "simulated frames (log scale); noise-free rows: expected photons/pixel", fontsize=11
    )
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=80)
    plt.close(fig)
    return p

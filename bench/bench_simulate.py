"""Speed and class statistics of the frame simulator (``hitstream.simulate``).

Reports, for ``--frames`` frames of the default run:

- frames/s of ``simulate_frames`` in this process (numpy's BLAS as configured);
- frames/s with ``--workers`` processes generating disjoint index ranges (every frame
  depends only on (seed, index), so the pieces are independent; only timings come back);
- frames/s per class (one class at a time);
- frames/s of simulate + write to HDF5 for each compression, with bytes per frame;
- per class: frames, photons per frame (mean, median, 5-95 %), share of photons within a
  radius of 1/6 of the frame width (low q), azimuthal modulation of the noise-free intensity
  (fringes: high for multiples, low for singles).

``--png docs/simulated_frames.png`` also writes a montage of example frames per class, each
with its noise-free intensity.

    .venv/bin/python bench/bench_simulate.py --frames 1000 --png docs/simulated_frames.png
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from hitstream.simulate import (
    SIM_CLASSES,
    SimConfig,
    iter_chunks,
    simulate_frames,
    simulate_indices,
    write_example_montage,
    write_run,
)


def _timed_range(args: tuple[int, int, int]) -> float:
    start, stop, seed = args
    t = time.perf_counter()
    simulate_frames(start, stop, seed)
    return time.perf_counter() - t


def _only(name: str) -> SimConfig:
    fr = [0.0] * len(SIM_CLASSES)
    fr[SIM_CLASSES.index(name)] = 1.0
    return SimConfig(fractions=tuple(fr))


def _modulation(img: np.ndarray, radius: np.ndarray, valid: np.ndarray) -> float:
    ring = np.round(radius).astype(int)
    cv = [
        img[(ring == r) & valid].std() / max(img[(ring == r) & valid].mean(), 1e-12)
        for r in range(8, 40)
    ]
    return float(np.median(cv))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--png", type=Path, help="write a montage of example frames here")
    ap.add_argument("--json", type=Path, help="write the numbers as JSON here")
    a = ap.parse_args()
    n, seed = a.frames, a.seed
    out: dict = {"frames": n}

    simulate_frames(0, 4, seed)  # warm caches
    t = time.perf_counter()
    run = simulate_frames(0, n, seed)
    out["fps_1proc"] = n / (time.perf_counter() - t)
    print(f"simulate_frames, 1 process: {out['fps_1proc']:.0f} frames/s")

    if a.workers > 1:
        bounds = np.linspace(0, n, a.workers + 1).astype(int)
        parts = [(int(bounds[i]), int(bounds[i + 1]), seed) for i in range(a.workers)]
        with ProcessPoolExecutor(a.workers) as pool:
            list(pool.map(_timed_range, [(0, 2, seed)] * a.workers))  # start the workers
            t = time.perf_counter()
            list(pool.map(_timed_range, parts))
            out["fps_workers"] = n / (time.perf_counter() - t)
        print(f"simulate_frames, {a.workers} processes: {out['fps_workers']:.0f} frames/s")

    for name in SIM_CLASSES:
        m = max(50, n // 10)
        t = time.perf_counter()
        simulate_frames(0, m, seed, _only(name))
        out[f"fps_{name}"] = m / (time.perf_counter() - t)
    print(
        "per class: " + ", ".join(f"{c} {out[f'fps_{c}']:.0f}" for c in SIM_CLASSES) + " frames/s"
    )

    with tempfile.TemporaryDirectory() as tmp:
        for comp in ("gzip", "lzf", "none"):
            path = Path(tmp) / f"{comp}.h5"
            t = time.perf_counter()
            m = min(n, 500)
            for k, part in enumerate(iter_chunks(0, m, seed, chunk=m)):
                write_run(
                    path, part, dataset="entry_1/data_1/data", compression=comp, overwrite=k > 0
                )
            fps = m / (time.perf_counter() - t)
            size = path.stat().st_size / m
            out[f"write_{comp}"] = {"fps": fps, "bytes_per_frame": size}
            print(f"simulate + write ({comp}): {fps:.0f} frames/s, {size / 1e3:.1f} kB/frame")

    geom = SimConfig().geometry
    valid = geom.valid_pixels()
    cy, cx = geom.center_px
    radius = np.hypot(np.arange(geom.shape[0])[:, None] - cy, np.arange(geom.shape[1]) - cx)
    tot = run.frames.sum(axis=(1, 2))
    low_q = (run.frames * (geom.shape[1] / 6 > radius)).sum(axis=(1, 2)) / np.maximum(tot, 1)
    print(
        f"{'class':9s} {'frames':>6s} {'mean':>8s} {'median':>8s} {'p5':>7s} {'p95':>8s} "
        f"{'low-q':>6s} {'modul.':>6s}"
    )
    for i, name in enumerate(SIM_CLASSES):
        sel = np.flatnonzero(run.labels == i)
        if not len(sel):
            continue
        t_c = tot[sel]
        clean = simulate_indices(sel[:40], seed, noise=False).frames
        mod = float(np.median([_modulation(f, radius, valid) for f in clean]))
        stats = {
            "frames": len(sel),
            "photons_mean": float(t_c.mean()),
            "photons_median": float(np.median(t_c)),
            "photons_p5": float(np.percentile(t_c, 5)),
            "photons_p95": float(np.percentile(t_c, 95)),
            "low_q_share": float(np.median(low_q[sel])),
            "modulation": mod,
        }
        out[name] = stats
        print(
            f"{name:9s} {len(sel):6d} {t_c.mean():8.0f} {np.median(t_c):8.0f} "
            f"{stats['photons_p5']:7.0f} {stats['photons_p95']:8.0f} "
            f"{stats['low_q_share']:6.2f} {mod:6.2f}"
        )
    sub = run.params["subclass"]
    for k, kind in enumerate(("droplet", "aggregate", "rod")):
        sel = sub == k
        if sel.any():
            print(f"  other/{kind}: {sel.sum()} frames, median {np.median(tot[sel]):.0f} photons")

    if a.png:
        write_example_montage(a.png, run.labels, seed, per_class=6)
        print(f"montage: {a.png}")
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

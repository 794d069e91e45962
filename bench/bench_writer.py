"""Throughput of the rolling CXI writer: frames/s for 260x257 float32 frames.

For each compression and kept fraction, writes ``--frames`` frames in batches (a pool of
pre-made batches is cycled, so frame generation is not timed) and reports frames seen per
second, kept frames per second, the file bytes per second and the compression ratio.

``--data sparse`` is photon-count-like (Poisson, mean 0.05 photon/pixel plus a few bright
hits: what SPI frames look like after photon conversion); ``--data noise`` is Gaussian float
noise (worst case: calibrated but not photon-converted data barely compresses).

    .venv/bin/python bench/bench_writer.py --frames 6000 --data sparse noise
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from hitstream.compression import COMPRESSIONS
from hitstream.geometry import FRAME_SHAPE, DetectorGeometry
from streamer.types import FrameBatch, ResultBatch
from streamer.writer import RollingWriter, WriterConfig

CLASSES = ("empty", "single", "multiple", "other")


def make_pool(kind: str, batch: int, keep_frac: float, n_pool: int = 8) -> list[ResultBatch]:
    """Pre-made result batches (``keep_frac`` of each batch kept, evenly spread)."""
    rng = np.random.default_rng(0)
    h, w = FRAME_SHAPE
    pool = []
    for i in range(n_pool):
        if kind == "sparse":
            frames = rng.poisson(0.05, size=(batch, h, w)).astype(np.float32)
            frames[:, 120:140, 118:138] += rng.poisson(20.0, size=(batch, 20, 20))
        else:
            frames = rng.normal(0.0, 1.0, size=(batch, h, w)).astype(np.float32)
        probs = rng.dirichlet(np.ones(len(CLASSES)), size=batch).astype(np.float32)
        keep = np.zeros(batch, dtype=bool)
        keep[: round(batch * keep_frac)] = True
        rng.shuffle(keep)
        fb = FrameBatch(
            frames=frames,
            train_id=np.full(batch, i, np.uint64),
            pulse_id=np.arange(batch, dtype=np.uint32),
            timestamp=np.full(batch, 1.7e9),
            received=np.zeros(batch),
        )
        pool.append(
            ResultBatch(
                batch=fb,
                probabilities=probs,
                label=probs.argmax(1).astype(np.int16),
                template_distance=rng.random(batch).astype(np.float32),
                keep=keep,
                model_version="bench:1",
                classes=CLASSES,
            )
        )
    return pool


def bench_one(
    out_dir: Path, compression: str, keep_frac: float, kind: str, n_frames: int, batch: int
) -> dict[str, float | str]:
    pool = make_pool(kind, batch, keep_frac)
    cfg = WriterConfig(out_dir, run="bench", compression=compression, max_frames=2000)
    n_batches = max(1, n_frames // batch)
    t0 = time.perf_counter()
    with RollingWriter(
        cfg, classes=CLASSES, frame_shape=FRAME_SHAPE, geometry=DetectorGeometry()
    ) as w:
        for i in range(n_batches):
            r = pool[i % len(pool)]
            r.batch.train_id[:] = i
            w.write(r)
    dt = time.perf_counter() - t0
    raw = w.frames_kept * FRAME_SHAPE[0] * FRAME_SHAPE[1] * 4
    return {
        "data": kind,
        "compression": compression,
        "kept": keep_frac,
        "frames_per_s": w.frames_seen / dt,
        "kept_per_s": w.frames_kept / dt,
        "file_MB_per_s": w.bytes_written / dt / 1e6,
        "ratio": raw / max(1, w.bytes_written),
        "files": len(w.files_closed),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=6000, help="frames per case")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--compression", nargs="+", default=list(COMPRESSIONS), choices=COMPRESSIONS)
    p.add_argument("--kept", nargs="+", type=float, default=[1.0, 0.2])
    p.add_argument("--data", nargs="+", default=["sparse"], choices=["sparse", "noise"])
    p.add_argument("--dir", type=Path, default=None, help="where to write (default: a tmp dir)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)

    results = []
    print(
        f"{'data':7s} {'compression':15s} {'kept':>5s} {'frames/s':>9s} {'kept/s':>8s} "
        f"{'MB/s':>7s} {'ratio':>6s}"
    )
    for kind in args.data:
        for comp in args.compression:
            for kf in args.kept:
                tmp = Path(tempfile.mkdtemp(prefix="bench_writer_", dir=args.dir))
                try:
                    r = bench_one(tmp, comp, kf, kind, args.frames, args.batch)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
                results.append(r)
                print(
                    f"{kind:7s} {comp:15s} {kf:5.2f} {r['frames_per_s']:9.0f} "
                    f"{r['kept_per_s']:8.0f} {r['file_MB_per_s']:7.1f} {r['ratio']:6.2f}",
                    flush=True,
                )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

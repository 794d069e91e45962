"""Runs to replay in throughput measurements: uncompressed, any length, cheap to make.

:func:`photon_like_frames` draws Poisson frames with a bright centre (numpy only: for hosts
without scipy, e.g. a GPU host with only the serving packages), :func:`write_synthetic_run`
tiles them into a file, :func:`write_tiled_run` tiles a few hundred simulated frames instead.
Both write ONE ``data`` dataset of float32 frames, chunked 32 frames, uncompressed (the
producer must not be the bottleneck), and reuse an existing file of the same length.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from hitstream.geometry import FRAME_SHAPE

DATASET = "data"
CHUNK_FRAMES = 32


def photon_like_frames(shape: tuple[int, int], n: int, seed: int = 0) -> np.ndarray:
    """Photon-count-like frames (Poisson, bright centre) so preprocessing does real work."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    r2 = (yy - h / 2) ** 2 + (xx - w / 2) ** 2
    lam = 5.0 * np.exp(-r2 / (2 * 30.0**2))
    return rng.poisson(lam, size=(n, h, w)).astype(np.float32)


def _has_frames(path: Path, frames: int) -> bool:
    if not path.exists():
        return False
    with h5py.File(path, "r") as f:
        return DATASET in f and f[DATASET].shape[0] == frames


def _write_tiled(path: Path, base: np.ndarray, frames: int) -> Path:
    reps = int(np.ceil(frames / len(base)))
    with h5py.File(path, "w") as f:
        f.create_dataset(
            DATASET,
            data=np.tile(base, (reps, 1, 1))[:frames],
            chunks=(min(CHUNK_FRAMES, frames), *base.shape[1:]),
        )
    return path


def write_synthetic_run(
    path: str | Path, frames: int, shape: tuple[int, int] = FRAME_SHAPE
) -> Path:
    """``frames`` photon-like frames (256 distinct, tiled; no simulator, no scipy)."""
    path = Path(path)
    if _has_frames(path, frames):
        return path
    return _write_tiled(path, photon_like_frames(shape, min(frames, 256)), frames)


def write_tiled_run(path: str | Path, frames: int, distinct: int = 500, seed: int = 11) -> Path:
    """``frames`` simulated frames: the first ``distinct`` of run ``seed``, tiled."""
    from hitstream.simulate.scene import simulate_run

    path = Path(path)
    if _has_frames(path, frames):
        return path
    sim = simulate_run(min(distinct, frames), seed=seed, progress=True)
    return _write_tiled(path, sim.frames, frames)

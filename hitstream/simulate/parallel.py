"""Simulated frames in worker processes: the same frames as one process, sooner.

Frame ``i`` of a run depends only on ``(seed, i)``, so :func:`simulate_parallel` splits the
indices into chunks, simulates them in ``spawn``-ed processes (never forked: the caller may
hold TensorFlow) and places each chunk where it belongs; the result does not depend on the
number of workers.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

import numpy as np

from hitstream.simulate.config import SimConfig
from hitstream.simulate.scene import simulate_frames

T = TypeVar("T")


def map_in_processes(
    fn: Callable[[Any], T], parts: Sequence[Any], workers: int = 2, chunksize: int = 1
) -> Iterator[T]:
    """``fn`` over ``parts``, in order: in ``workers`` ``spawn``-ed processes (1: in this
    one). ``fn`` must be a module-level function."""
    if workers <= 1:
        yield from map(fn, parts)
        return
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx) as ex:
        yield from ex.map(fn, parts, chunksize=chunksize)


TRUTH_KEYS = ("photons", "background")  # the per-frame truth simulate_parallel can return


def _simulate_part(
    args: tuple[int, int, int, SimConfig],
) -> tuple[int, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    start, stop, seed, config = args
    run = simulate_frames(start, stop, seed, config)
    return start, run.frames, run.labels, {k: np.asarray(run.params[k]) for k in TRUTH_KEYS}


def simulate_parallel(
    n: int,
    seed: int,
    config: SimConfig | None = None,
    workers: int = 2,
    desc: str = "simulate",
    chunk: int = 64,
    truth: dict[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Frames (n, H, W) float32 and labels (n,) int8 of frames 0..n-1 of run ``seed``,
    computed in ``workers`` processes (1: in this one), with a tqdm bar named ``desc``. A
    ``truth`` dict is filled with each frame's :data:`TRUTH_KEYS` (signal and background
    photons), as :func:`trainer.model.quality.score_bundle` takes them."""
    from tqdm import tqdm

    config = config or SimConfig()
    frames = np.empty((n, *config.geometry.shape), np.float32)
    labels = np.empty(n, np.int8)
    params = {k: np.empty(n, np.float64) for k in TRUTH_KEYS}
    parts = [(a, min(a + chunk, n), seed, config) for a in range(0, n, chunk)]
    with tqdm(total=n, unit="frame", desc=desc) as bar:
        for start, f, lab, par in map_in_processes(_simulate_part, parts, workers):
            frames[start : start + len(f)], labels[start : start + len(f)] = f, lab
            for k in TRUTH_KEYS:
                params[k][start : start + len(f)] = par[k]
            bar.update(len(f))
    if truth is not None:
        truth.update(params)
    return frames, labels

"""Small seeded inputs shared by the ingest and labels tests."""

from __future__ import annotations

import h5py
import numpy as np

from hitstream.labels import LabelTable

SHAPE = (6, 5)


def frames_of(n: int, seed: int, dtype: str) -> np.ndarray:
    """Distinct values per frame that every dtype holds exactly."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 1000, size=(n, *SHAPE)).astype(dtype)


def write_h5(path, data, dataset="data", **kw):
    with h5py.File(path, "w") as f:
        f.create_dataset(dataset, data=data, **kw)
    return path


def table(rows, **extra) -> LabelTable:
    run, index, label = zip(*rows, strict=True) if rows else ((), (), ())
    return LabelTable(np.array(run, str), np.array(index, np.int64), np.array(label, str), extra)

"""Labelled frames of HDF5 runs as one training set, and how to split it.

:func:`load_labelled_frames` reads the frames a labels table names (in photons) with integer
labels in a fixed class order and the runs' one detector geometry; :func:`stratified_split`
holds out a share of every class; :func:`labelled_indices` lists a run's frames of one class.
Numpy and h5py only (no TensorFlow).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hitstream.errors import ConfigError, InputDataError
from hitstream.geometry import DetectorGeometry
from trainer.data.backgrounds import RunBackgrounds, labelled_backgrounds


@dataclass
class LabelledFrames:
    """Frames with integer labels into ``classes`` and where each frame came from."""

    frames: np.ndarray  # (N, H, W) float32
    labels: np.ndarray  # (N,) int64
    classes: tuple[str, ...]
    sources: list[tuple[str, int]]  # (run name, index in the run)
    geometry: DetectorGeometry
    backgrounds: RunBackgrounds | None = None  # the runs' background estimates, when asked


def class_order(names: Sequence[str]) -> tuple[str, ...]:
    """The simulator's order for its classes (single first), then any others sorted."""
    from hitstream.simulate import SIM_CLASSES

    present = set(names)
    return tuple(c for c in SIM_CLASSES if c in present) + tuple(sorted(present - set(SIM_CLASSES)))


def load_labelled_frames(
    paths: Sequence[Path],
    dataset: str = "data",
    labels_paths: Sequence[Path] | None = None,
    classes: Sequence[str] | None = None,
    photon_unit: float = 1.0,
    backgrounds: bool = False,
) -> LabelledFrames:
    """Read the labelled frames of HDF5 runs (in photons: see ``photon_unit`` of
    :func:`trainer.data.ingest.open_run`).

    Labels files (CSV ``run,index,class``, JSON or HDF5; later files win for the same frame)
    name runs by path, file name or stem; by default each run has ``<stem>.labels.csv``
    beside it. Only labelled frames are read; with ``backgrounds`` each run is also read
    (a sample of it) for its background estimate (:mod:`trainer.data.backgrounds`).
    """
    from hitstream.labels import merge_labels, read_labels
    from hitstream.simulate import default_labels_path
    from trainer.data.ingest import load_labelled

    paths = [Path(p) for p in paths]
    files = (
        [Path(p) for p in labels_paths] if labels_paths else [default_labels_path(p) for p in paths]
    )
    table = None
    for f in files:
        t = read_labels(f)
        table = t if table is None else merge_labels(table, t)
    if table is None or len(table) == 0:
        raise InputDataError(f"no labelled frames in {', '.join(map(str, files))}")
    order = tuple(classes) if classes else class_order(table.label.tolist())
    missing = sorted(set(table.label.tolist()) - set(order))
    if missing:
        raise ConfigError(f"labels use classes {missing} that are not in --classes {order}")
    data = load_labelled([(p, dataset) for p in paths], table, order, photon_unit=photon_unit)
    geometry = None
    for info in data.sources.values():
        g = info.geometry
        if geometry is not None and g != geometry:
            raise InputDataError(f"{info.path}: detector geometry differs from the other runs")
        geometry = g
    assert geometry is not None
    sources = list(zip(data.run.tolist(), data.index.tolist(), strict=True))
    bgs = labelled_backgrounds(data, photon_unit) if backgrounds else None
    return LabelledFrames(data.frames, data.y, order, sources, geometry, bgs)


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, validation): ``fraction`` of every class (at least one) to validation."""
    if not 0 < fraction < 1:
        raise ConfigError(f"--val-fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = max(1, round(fraction * len(idx))) if len(idx) > 1 else 0
        val.append(idx[:k])
    val_idx = np.sort(np.concatenate(val))
    train_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
    return train_idx, val_idx


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

"""Simulated runs on disk: one ``(N, H, W)`` float32 HDF5 dataset plus a labels CSV
(``run,index,class`` and the per-frame truth), written in pieces with bounded memory.

:class:`RunWriter` streams pieces into a file, :func:`write_run` writes a run held in memory
and :func:`simulate_to_file` (``trainer simulate``) simulates a run straight into a file,
chunk by chunk with a progress bar."""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hitstream.compression import compression_options
from hitstream.errors import ConfigError
from hitstream.labels import LABEL_COLUMNS
from hitstream.simulate.config import (
    OTHER_KINDS,
    SIM_CLASSES,
    TRUTH_COLUMNS,
    SimConfig,
    SimulatedRun,
)
from hitstream.simulate.scene import iter_chunks, simulate_frames

log = logging.getLogger(__name__)


# --- files ------------------------------------------------------------------------------


def default_labels_path(path: str | Path) -> Path:
    """``<dir>/<stem>.labels.csv`` beside an HDF5 file."""
    p = Path(path)
    return p.with_name(p.stem + ".labels.csv")


class RunWriter:
    """Streams frames into ONE (N, H, W) float32 HDF5 dataset and labels into a CSV.

    Chunked one frame per chunk; ``compression`` is a name of
    :data:`hitstream.compression.COMPRESSIONS` ("gzip", the default, is readable by any HDF5
    tool; the hdf5plugin filters need ``import hdf5plugin`` to read) or None.
    Use as a context manager; call ``write(run)`` with consecutive pieces.
    """

    def __init__(
        self,
        path: str | Path,
        n_frames: int,
        *,
        shape: tuple[int, int] = (260, 257),
        dataset: str = "data",
        labels_path: str | Path | None = None,
        run_name: str | None = None,
        classes: Sequence[str] = SIM_CLASSES,
        compression: str | None = "gzip",
        truth: bool = True,
        overwrite: bool = False,
        attrs: dict[str, Any] | None = None,
    ) -> None:
        import h5py

        self.path = Path(path)
        self.labels_path = Path(labels_path) if labels_path else default_labels_path(path)
        self.run_name = run_name or self.path.name
        self.dataset = dataset
        self.n_frames = n_frames
        self.classes = tuple(classes)
        self.truth = truth
        for p in (self.path, self.labels_path):
            if p.exists() and not overwrite:
                raise ConfigError(f"{p} exists; choose another name or overwrite (--overwrite)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.labels_path.parent.mkdir(parents=True, exist_ok=True)
        self._file = h5py.File(self.path, "w")
        try:
            self._dset = self._file.create_dataset(
                dataset,
                shape=(n_frames, *shape),
                dtype=np.float32,
                chunks=(1, *shape),
                **compression_options(compression or "none"),
            )
            for key, value in (attrs or {}).items():
                self._dset.attrs[key] = value
            self._csv_file = open(self.labels_path, "w", newline="", encoding="utf-8")  # noqa: SIM115
        except BaseException:
            self._file.close()
            raise
        self._csv = csv.writer(self._csv_file, lineterminator="\n")
        self._csv.writerow(LABEL_COLUMNS + (TRUTH_COLUMNS if truth else ()))
        self.written = 0

    def write(self, run: SimulatedRun) -> None:
        """Append the frames and labels of ``run`` after those already written."""
        n = len(run)
        if self.written + n > self.n_frames:
            raise ConfigError(f"{self.path}: more than the {self.n_frames} frames announced")
        self._dset[self.written : self.written + n] = run.frames
        p = run.params
        for k in range(n):
            row: list[Any] = [self.run_name, self.written + k, run.classes[run.labels[k]]]
            if self.truth:
                sub = int(p["subclass"][k]) if "subclass" in p else -1
                row += [
                    int(p["n_particles"][k]),
                    f"{p['radius_nm'][k]:.2f}",
                    f"{p['separation_nm'][k]:.1f}",
                    f"{p['photons'][k]:.1f}",
                    f"{p['background'][k]:.1f}",
                    OTHER_KINDS[sub] if sub >= 0 else "",
                    int(p["beamline_run"][k]) if "beamline_run" in p else 0,
                    f"{p['bg_level'][k]:.5f}" if "bg_level" in p else "",
                ]
            self._csv.writerow(row)
        self.written += n

    def close(self) -> None:
        if self._file:
            self._file.close()
            self._csv_file.close()
            self._file = None
            if self.written != self.n_frames:
                log.warning("%s: %d of %d frames written", self.path, self.written, self.n_frames)

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_attrs(run: SimulatedRun) -> dict[str, Any]:
    """Provenance attributes for the frames dataset."""
    attrs: dict[str, Any] = {
        "classes": json.dumps(list(run.classes)),
        "simulator": "hitstream.simulate",
    }
    if run.config is not None:
        attrs["geometry"] = json.dumps(run.config.geometry.as_attrs())
        attrs["sim_config"] = run.config.as_json()
    if run.seed is not None:
        attrs["seed"] = run.seed
        attrs["first_index"] = run.start
    return attrs


def write_run(
    path: str | Path,
    run: SimulatedRun,
    dataset: str = "data",
    labels_path: str | Path | None = None,
    run_name: str | None = None,
    chunk: int = 256,
    compression: str | None = "gzip",
    overwrite: bool = False,
) -> Path:
    """Write ``run`` as one HDF5 dataset plus a labels CSV (``run,index,class`` + truth).

    ``chunk`` frames are written per call. Returns the HDF5 path.
    """
    with RunWriter(
        path,
        len(run),
        shape=run.frames.shape[1:],
        dataset=dataset,
        labels_path=labels_path,
        run_name=run_name,
        classes=run.classes,
        compression=compression,
        truth=bool(run.params),
        overwrite=overwrite,
        attrs=run_attrs(run),
    ) as w:
        for a in range(0, len(run), max(1, chunk)):
            b = min(a + max(1, chunk), len(run))
            w.write(
                SimulatedRun(
                    run.frames[a:b],
                    run.labels[a:b],
                    run.classes,
                    {k: v[a:b] for k, v in run.params.items()},
                )
            )
    return Path(path)


@dataclass
class WrittenRun:
    """What :func:`simulate_to_file` wrote."""

    path: Path
    labels_path: Path
    dataset: str
    labels: np.ndarray  # (N,) int8 into SIM_CLASSES
    seconds: float  # simulating and writing
    montage: Path | None = None

    def counts(self) -> dict[str, int]:
        """Frames per class, in the simulator's class order."""
        return {c: int(np.sum(self.labels == i)) for i, c in enumerate(SIM_CLASSES)}


def simulate_to_file(
    path: str | Path,
    n_frames: int,
    seed: int = 0,
    config: SimConfig = SimConfig(),
    *,
    dataset: str = "data",
    labels_path: str | Path | None = None,
    run_name: str | None = None,
    compression: str | None = "gzip",
    chunk: int = 256,
    truth: bool = True,
    overwrite: bool = False,
    montage: str | Path | None = None,
    progress: bool | None = None,
) -> WrittenRun:
    """Simulate frames ``0 .. n_frames-1`` of run ``seed`` into ``path`` (and its labels
    CSV), ``chunk`` frames at a time, with a tqdm bar on stderr (``progress`` None: only on
    a terminal). ``montage``: also a PNG of up to 6 example frames per class with their
    noise-free intensities (:func:`hitstream.simulate.montage.write_montage`)."""
    from tqdm import tqdm

    if n_frames < 1:
        raise ConfigError(f"--frames must be >= 1, got {n_frames}")
    if seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {seed}")
    labels = np.empty(n_frames, np.int8)
    quiet = None if progress is None else not progress
    attrs = run_attrs(simulate_frames(0, 0, seed, config))
    t0 = time.perf_counter()
    with (
        RunWriter(
            path,
            n_frames,
            shape=config.geometry.shape,
            dataset=dataset,
            labels_path=labels_path,
            run_name=run_name,
            compression=compression,
            truth=truth,
            overwrite=overwrite,
            attrs=attrs,
        ) as writer,
        tqdm(total=n_frames, unit="frame", desc="simulate", disable=quiet) as bar,
    ):
        for part in iter_chunks(0, n_frames, seed, config, chunk=chunk):
            labels[part.start : part.start + len(part)] = part.labels
            writer.write(part)
            bar.update(len(part))
    done = WrittenRun(writer.path, writer.labels_path, dataset, labels, time.perf_counter() - t0)
    if montage is not None:
        from hitstream.simulate.montage import write_example_montage

        done.montage = write_example_montage(montage, labels, seed, config)
    return done

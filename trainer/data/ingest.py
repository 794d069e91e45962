"""Read frames from HDF5/CXI runs, robustly, and the frames that a LabelTable labels.

Runs
    One ``(N, H, W)`` dataset per file, at a path the user gives (CXI: for example
    ``entry_1/data_1/data``; soft links are followed). Any integer or float dtype; frames come
    back as float32, converted block by block (never the whole run at once)::

        with open_run("r0042.cxi", "entry_1/data_1/data") as src:
            x = read_frames(src, [7, 3, 7])          # (3, H, W) float32, in the order asked
            for start, block in iter_frames(src):    # (<=256, H, W) float32 blocks
                ...

Labels (files, LabelTable, read_labels, write_labels, merge_labels) are in
hitstream.labels; the HDF5 helpers shared with it are in hitstream.h5input.

Matching labels to runs (``load_labelled``)
    A label's ``run`` is compared with every run file given, in three steps, and the first
    step with any match decides: (1) the full path, as given or resolved; (2) the file name
    (``r0042.cxi``); (3) the stem (``r0042``). A name with a ``/`` is compared as a path
    only. More than one match at that step is an error (ambiguous), as is a labelled run
    that matches no file (use ``labels.select(run=...)`` to load a subset), two names for
    one file, or an index past the end. Frames come in the order of the runs given, then by
    frame index; runs without labels contribute nothing.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hitstream.errors import ConfigError, InputDataError
from hitstream.geometry import DetectorGeometry, geometry_from_attrs
from hitstream.h5input import PathLike, open_frame_dataset, plain
from hitstream.labels import LabelTable

log = logging.getLogger(__name__)

PROGRESS_MIN_FRAMES = 1000  # a tqdm bar (stderr) above this many frames, unless told
READ_BLOCK_BYTES = 64 * 2**20  # most bytes (file dtype) read by one HDF5 call

# --- runs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunInfo:
    """What a run was read from (for provenance and geometry checks)."""

    path: Path
    dataset: str
    shape: tuple[int, int, int]
    dtype: np.dtype
    attrs: dict[str, Any]

    @property
    def geometry(self) -> DetectorGeometry:
        """The run's detector geometry (its ``geometry`` attribute, else the default one)."""
        return geometry_from_attrs(
            self.attrs.get("geometry"), shape=self.shape[1:], where=f"{self.path}:{self.dataset}"
        )


class RunSource:
    """An open ``(N, H, W)`` frames dataset; nothing is read until asked. Context manager."""

    def __init__(
        self,
        path: Path,
        dataset: str,
        file: h5py.File,
        dset: h5py.Dataset,
        photon_unit: float = 1.0,
    ) -> None:
        self.path = path
        self.dataset = dataset
        self.photon_unit = photon_unit  # one photon in the file's units; frames come in photons
        self.shape: tuple[int, int, int] = tuple(int(n) for n in dset.shape)  # type: ignore[assignment]
        self.dtype: np.dtype = dset.dtype
        self.chunks: tuple[int, ...] | None = dset.chunks
        self._file: h5py.File | None = file
        self._dset = dset

    @property
    def name(self) -> str:
        """File name, the usual ``run`` of labels."""
        return self.path.name

    @property
    def n_frames(self) -> int:
        return self.shape[0]

    @property
    def frame_shape(self) -> tuple[int, int]:
        return self.shape[1], self.shape[2]

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def closed(self) -> bool:
        return self._file is None

    @property
    def dset(self) -> h5py.Dataset:
        if self._file is None:
            raise InputDataError(f"{self.path}: run is closed")
        return self._dset

    @property
    def attrs(self) -> dict[str, Any]:
        """Attributes of the dataset (bytes decoded; unreadable ones left out)."""
        out: dict[str, Any] = {}
        for key in self.dset.attrs:
            with contextlib.suppress(Exception):
                out[key] = plain(self.dset.attrs[key])
        return out

    def info(self) -> RunInfo:
        return RunInfo(self.path, self.dataset, self.shape, self.dtype, self.attrs)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> RunSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = " closed" if self.closed else ""
        return f"<RunSource {self.path}:{self.dataset} {self.shape} {self.dtype}{state}>"


def open_run(
    path: PathLike,
    dataset: str,
    *,
    frame_shape: tuple[int, int] | None = None,
    photon_unit: float = 1.0,
) -> RunSource:
    """Open the ``(N, H, W)`` integer/float ``dataset`` of an HDF5/CXI file, lazily.

    ``frame_shape``: the ``(H, W)`` expected, checked. ``photon_unit``: one photon's value in
    the file's units (ADU, keV, ...); frames are read divided by it, i.e. in photons. Raises
    InputDataError naming the file (and listing its 3-D datasets when ``dataset`` is wrong).
    """
    if not (math.isfinite(photon_unit) and photon_unit > 0):
        raise ConfigError(f"photon unit must be a positive number, got {photon_unit}")
    p = Path(path)
    f, dset = open_frame_dataset(p, dataset, frame_shape=frame_shape)
    return RunSource(p, dataset, f, dset, photon_unit)


class RunGroup(Sequence[RunSource]):
    """Several open runs with the same frame shape; closes them all. Context manager."""

    def __init__(self, sources: Sequence[RunSource]) -> None:
        self.sources = tuple(sources)

    def __getitem__(self, k):  # type: ignore[no-untyped-def]
        return self.sources[k]

    def __len__(self) -> int:
        return len(self.sources)

    @property
    def n_frames(self) -> int:
        return sum(s.n_frames for s in self.sources)

    @property
    def frame_shape(self) -> tuple[int, int] | None:
        return self.sources[0].frame_shape if self.sources else None

    def close(self) -> None:
        for s in self.sources:
            s.close()

    def __enter__(self) -> RunGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_runs(
    runs: Iterable[tuple[PathLike, str]],
    *,
    frame_shape: tuple[int, int] | None = None,
    photon_unit: float = 1.0,
) -> RunGroup:
    """Open ``(path, dataset)`` pairs; their frame shapes must agree (and be ``frame_shape``).

    The same file and dataset twice is an error. On any error the runs opened are closed.
    """
    sources: list[RunSource] = []
    seen: dict[tuple[str, str], Path] = {}
    try:
        for path, dataset in runs:
            src = open_run(path, dataset, frame_shape=frame_shape, photon_unit=photon_unit)
            sources.append(src)
            key = (str(src.path.resolve()), dataset.strip("/"))
            if key in seen:
                raise InputDataError(f"{src.path}:{dataset} is given twice")
            seen[key] = src.path
            first = sources[0]
            if src.frame_shape != first.frame_shape:
                raise InputDataError(
                    f"{src.path}:{dataset} has frames of {src.frame_shape} pixels but "
                    f"{first.path}:{first.dataset} has {first.frame_shape}"
                )
    except BaseException:
        for s in sources:
            s.close()
        raise
    return RunGroup(sources)


def _progress(total: int, progress: bool | None, desc: str):  # type: ignore[no-untyped-def]
    from tqdm import tqdm

    show = total > PROGRESS_MIN_FRAMES if progress is None else progress
    return tqdm(total=total, unit="frame", desc=desc, file=sys.stderr, disable=not show)


def _block_frames(src: RunSource) -> int:
    frame_bytes = max(1, src.shape[1] * src.shape[2] * src.dtype.itemsize)
    return max(1, READ_BLOCK_BYTES // frame_bytes)


def _segments(u: np.ndarray, chunk_rows: int, block: int) -> Iterator[tuple[int, int]]:
    """Split sorted unique frame numbers into ``[i, j)`` runs read by one slice each:
    neighbours join when consecutive or in the same storage chunk, up to ``block`` frames."""
    i = 0
    n = len(u)
    while i < n:
        j = i + 1
        while (
            j < n
            and u[j] - u[i] < block
            and (u[j] - u[j - 1] == 1 or u[j] // chunk_rows == u[j - 1] // chunk_rows)
        ):
            j += 1
        yield i, j
        i = j


def _fill(src: RunSource, idx: np.ndarray, out: np.ndarray, bar: Any = None) -> None:
    """``out[k] = frame idx[k]`` as float32; reads sorted, chunk by chunk (idx checked)."""
    if len(idx) == 0:
        return
    dset = src.dset
    order = np.argsort(idx, kind="stable")
    sidx = idx[order]
    first = np.ones(len(sidx), bool)
    first[1:] = sidx[1:] != sidx[:-1]
    u = sidx[first]
    starts = np.flatnonzero(first)  # where each unique frame's run in sidx begins
    ends = np.append(starts[1:], len(sidx))
    chunk_rows = int(src.chunks[0]) if src.chunks else 1
    direct = src.dtype == np.float32 and out.flags.c_contiguous
    for i, j in _segments(u, chunk_rows, _block_frames(src)):
        lo, hi = int(u[i]), int(u[j - 1]) + 1
        a, b = int(starts[i]), int(ends[j - 1])  # rows of sidx served by this read
        pos = order[a:b]
        try:
            dense = b - a == j - i == hi - lo  # no gaps, no repeats
            if dense and bool(np.all(np.diff(pos) == 1)):
                p0 = int(pos[0])
                if direct:
                    dset.read_direct(out, np.s_[lo:hi], np.s_[p0 : p0 + b - a])
                else:
                    out[p0 : p0 + b - a] = dset[lo:hi]
            else:
                out[pos] = dset[lo:hi][sidx[a:b] - lo]
        except OSError as exc:
            raise InputDataError(
                f"{src.path}:{src.dataset}: cannot read frames {lo}..{hi - 1} ({exc}); the "
                "file may be truncated or damaged, or compressed with a filter that is not "
                "installed (hdf5plugin)"
            ) from exc
        if bar is not None:
            bar.update(b - a)
    if src.photon_unit != 1.0:
        out *= np.float32(1.0 / src.photon_unit)


def _check_indices(src: RunSource, indices: Any) -> np.ndarray:
    idx = np.asarray(indices)
    if idx.size == 0:
        return np.zeros(0, np.int64)
    if idx.ndim != 1 or idx.dtype.kind not in "iu":
        raise InputDataError(f"{src.path}:{src.dataset}: frame indices must be 1-D integers")
    idx = idx.astype(np.int64)
    bad = np.flatnonzero((idx < 0) | (idx >= src.n_frames))
    if len(bad):
        raise InputDataError(
            f"{src.path}:{src.dataset}: frame index {int(idx[bad[0]])} is out of range; "
            f"the dataset has {src.n_frames} frames (0..{src.n_frames - 1})"
        )
    return idx


def read_frames(
    source: RunSource, indices: Sequence[int] | np.ndarray, *, progress: bool | None = None
) -> np.ndarray:
    """Frames ``indices`` (any order, repeats allowed) as ``(K, H, W)`` float32, in that
    order. Reads sorted, one slice per storage chunk / run of neighbours, then reorders.
    ``progress``: tqdm bar on stderr (default: above PROGRESS_MIN_FRAMES frames)."""
    idx = _check_indices(source, indices)
    out = np.empty((len(idx), *source.frame_shape), np.float32)
    with _progress(len(idx), progress, source.name) as bar:
        _fill(source, idx, out, bar)
    return out


def iter_frames(
    source: RunSource,
    chunk: int = 256,
    *,
    start: int = 0,
    stop: int | None = None,
    progress: bool | None = False,
) -> Iterator[tuple[int, np.ndarray]]:
    """``(first_index, frames)`` for consecutive blocks of at most ``chunk`` frames
    (``(k, H, W)`` float32, a fresh array each time) of frames ``start .. stop-1``."""
    if chunk < 1:
        raise ConfigError(f"chunk must be >= 1, got {chunk}")
    n = source.n_frames
    stop = n if stop is None else stop
    if not 0 <= start <= stop <= n:
        raise InputDataError(
            f"{source.path}:{source.dataset}: frames {start}..{stop - 1} are not within "
            f"the {n} frames of the dataset"
        )
    with _progress(stop - start, progress, source.name) as bar:
        for a in range(start, stop, chunk):
            b = min(a + chunk, stop)
            out = np.empty((b - a, *source.frame_shape), np.float32)
            _fill(source, np.arange(a, b, dtype=np.int64), out, bar)
            yield a, out


def check_units(source: RunSource, frames: np.ndarray, sample: int = 64) -> str | None:
    """Log (and return) a warning when ``frames`` (read from ``source``, in photons) do not
    look like photon counts in the unit in use (:mod:`hitstream.units`); None when they do."""
    from hitstream.units import estimate_photon_unit

    if len(frames) == 0:
        return None
    pick = np.linspace(0, len(frames) - 1, min(sample, len(frames))).astype(int)
    raw = frames[pick] * np.float32(source.photon_unit)
    advice = estimate_photon_unit(raw).advice(source.photon_unit, f"{source.path}:{source.dataset}")
    if advice:
        log.warning("%s", advice)
    return advice


def check_run_units(source: RunSource, sample: int = 64) -> str | None:
    """:func:`check_units` on ``sample`` frames spread over the whole run."""
    if source.n_frames == 0:
        return None
    idx = np.unique(np.linspace(0, source.n_frames - 1, min(sample, source.n_frames)).astype(int))
    return check_units(source, read_frames(source, idx, progress=False))


# --- labelled frames ------------------------------------------------------------------------


@dataclass(frozen=True)
class Labelled:
    """Labelled frames from several runs, in the order of the runs given, then by index."""

    frames: np.ndarray  # (N, H, W) float32
    y: np.ndarray  # (N,) int64, index into classes
    classes: tuple[str, ...]
    run: np.ndarray  # (N,) str, the labels' run names
    index: np.ndarray  # (N,) int64, frame index within the run
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # labels' extra columns
    sources: dict[str, RunInfo] = field(default_factory=dict)  # run name -> file read

    def __len__(self) -> int:
        return len(self.y)

    def counts(self) -> dict[str, int]:
        """Frames per class, in ``classes`` order (zeros included)."""
        n = np.bincount(self.y, minlength=len(self.classes))
        return {c: int(n[k]) for k, c in enumerate(self.classes)}


def match_run(name: str, paths: Sequence[PathLike]) -> int | None:
    """Position in ``paths`` of the run a label's ``run`` names (full path, then file name,
    then stem; the first step with a match decides); None if none. Ambiguous: InputDataError."""
    ps = [Path(p) for p in paths]
    resolved = [p.resolve() for p in ps]
    target = Path(name).resolve() if ("/" in name or os.sep in name) else None
    steps = (
        [k for k, p in enumerate(ps) if name == str(p) or resolved[k] == target],
        [k for k, p in enumerate(ps) if name == p.name],
        [k for k, p in enumerate(ps) if name == p.stem],
    )
    for hits in steps:
        if len(hits) > 1:
            files = ", ".join(str(ps[k]) for k in hits)
            raise InputDataError(f"labels run {name!r} is ambiguous: it matches {files}")
        if hits:
            return hits[0]
    return None


def _check_classes(classes: Sequence[str]) -> tuple[str, ...]:
    out = tuple(classes)
    if not out or any(not isinstance(c, str) or not c.strip() for c in out):
        raise ConfigError(f"classes must be non-empty names, got {list(out)}")
    if len(set(out)) != len(out):
        raise ConfigError(f"classes contain duplicates: {list(out)}")
    return out


def load_labelled(
    runs: Sequence[tuple[PathLike, str]],
    labels: LabelTable,
    classes: Sequence[str] | None = None,
    *,
    frame_shape: tuple[int, int] | None = None,
    photon_unit: float = 1.0,
    progress: bool | None = None,
) -> Labelled:
    """Read every labelled frame of ``runs`` (``(path, dataset)`` pairs) as float32 with its
    integer class. Each labelled run must match one file (see ``match_run``); runs without
    labels are skipped. ``classes``: the class order (default: ``labels.classes()``); labels
    outside it are an error. Frames are read in blocks, with a tqdm bar on stderr above
    PROGRESS_MIN_FRAMES frames (``progress`` forces it on/off). ``photon_unit``: as in
    :func:`open_run`; a warning is logged when a run's frames do not look like photons."""
    if len(labels) == 0:
        raise InputDataError("no labels to load")
    order = _check_classes(classes) if classes is not None else labels.classes()
    unknown = sorted(set(labels.label.tolist()) - set(order))
    if unknown:
        counts = labels.counts()
        listed = ", ".join(f"{c!r} ({counts[c]} labels)" for c in unknown)
        raise InputDataError(f"labels use classes {listed} not in the classes {list(order)}")
    paths = [Path(p) for p, _ in runs]
    names = labels.runs()
    where: dict[str, int] = {}
    missing = []
    for name in names:
        k = match_run(name, paths)
        if k is None:
            missing.append(name)
        else:
            where[name] = k
    if missing:
        n = labels.select(run=missing[0])
        given = ", ".join(p.name for p in paths) or "none"
        raise InputDataError(
            f"labels name run(s) {', '.join(repr(m) for m in missing[:10])} "
            f"({len(n)} labels for {missing[0]!r}), not among the runs given ({given})"
        )
    by_run: dict[int, str] = {}
    for name, k in where.items():
        if k in by_run:
            raise InputDataError(
                f"labels name run {paths[k]} both as {by_run[k]!r} and {name!r}; use one name"
            )
        by_run[k] = name
    class_of = {c: i for i, c in enumerate(order)}
    with open_runs(runs, frame_shape=frame_shape, photon_unit=photon_unit) as group:
        plan = []
        for k, src in enumerate(group):
            name = by_run.get(k)
            if name is None:
                continue
            rows = np.flatnonzero(labels.run == name)
            rows = rows[np.argsort(labels.index[rows], kind="stable")]
            idx = labels.index[rows]
            if len(idx) and int(idx[-1]) >= src.n_frames:
                raise InputDataError(
                    f"labels for run {name!r} name frame {int(idx[-1])}, but "
                    f"{src.path}:{src.dataset} has {src.n_frames} frames (0..{src.n_frames - 1})"
                )
            plan.append((src, name, rows, idx))
        total = sum(len(r) for _, _, r, _ in plan)
        shape = group.frame_shape or (0, 0)
        try:
            frames = np.empty((total, *shape), np.float32)
        except MemoryError as exc:
            raise InputDataError(
                f"not enough memory for {total} frames of {shape} float32 "
                f"({total * shape[0] * shape[1] * 4 / 1e9:.1f} GB)"
            ) from exc
        offset = 0
        with _progress(total, progress, "read labelled frames") as bar:
            for src, _, _, idx in plan:
                _fill(src, idx, frames[offset : offset + len(idx)], bar)
                check_units(src, frames[offset : offset + len(idx)])
                offset += len(idx)
        sources = {name: src.info() for src, name, _, _ in plan}
    rows = np.concatenate([r for _, _, r, _ in plan]) if plan else np.zeros(0, np.int64)
    y = np.array([class_of[c] for c in labels.label[rows].tolist()], np.int64)
    return Labelled(
        frames=frames,
        y=y,
        classes=order,
        run=labels.run[rows],
        index=labels.index[rows],
        extra={k: v[rows] for k, v in labels.extra.items()},
        sources=sources,
    )

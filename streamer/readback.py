"""Read a run's rolling files back: the decision tables as numpy arrays, kept frames in blocks.

Files are taken in the order of :func:`list_run_files` (worker, then sequence number), the
same order as the run index. ``.part`` files (still being written, or left by a killed
writer) are read in SWMR mode and cut to the rows that are consistent across their datasets.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401 - registers the LZ4/bitshuffle/zstd filters the writer uses
import numpy as np

from hitstream.errors import InputDataError
from streamer.writer import (
    COLUMNS,
    DATA_PATH,
    FRAME_ONLY_COLUMNS,
    FRAMES_GROUP,
    KEPT_GROUP,
    MODELS_PATH,
    PART_SUFFIX,
    file_pattern,
)

log = logging.getLogger(__name__)


def list_run_files(
    out_dir: Path, run: str, *, worker: str | None = None, include_part: bool = False
) -> list[Path]:
    """The run's files in ``out_dir`` sorted by worker, then sequence number.

    Only finished files unless ``include_part``; ``worker`` limits to one worker.
    """
    pattern = file_pattern(run, worker)
    found = []
    for p in Path(out_dir).iterdir():
        m = pattern.fullmatch(p.name)
        if m is None or (m["part"] and not include_part):
            continue
        found.append((m["worker"], int(m["seq"]), p))
    return [p for _, _, p in sorted(found)]


def open_cxi(path: Path) -> h5py.File:
    """Open a finished file read-only, or a ``.part`` file as an SWMR reader."""
    path = Path(path)
    try:
        if path.name.endswith(PART_SUFFIX):
            return h5py.File(path, "r", libver="latest", swmr=True)
        return h5py.File(path, "r")
    except OSError as exc:
        raise InputDataError(f"{path}: cannot open as HDF5 ({exc})") from exc


@dataclass
class FrameTable:
    """One row per frame. ``model`` indexes :attr:`RunTables.models`; ``kept_index`` is the
    row in :attr:`RunTables.kept` (and in the order of :func:`iter_kept_frames`), -1 when
    the frame was not kept; ``file`` indexes :attr:`RunTables.files`."""

    train_id: np.ndarray  # uint64
    pulse_id: np.ndarray  # uint32
    timestamp: np.ndarray  # float64, s since the epoch
    label: np.ndarray  # int16
    probabilities: np.ndarray  # (N, C) float32
    template_distance: np.ndarray  # float32
    model: np.ndarray  # int16
    kept: np.ndarray  # bool
    kept_index: np.ndarray  # int64
    file: np.ndarray  # int32

    def __len__(self) -> int:
        return len(self.train_id)


@dataclass
class RunTables:
    """The decision tables of a run: every frame seen, and the kept frames."""

    files: list[Path]
    classes: tuple[str, ...]
    models: tuple[str, ...]
    frame_shape: tuple[int, int]
    frames: FrameTable
    kept: FrameTable
    file_frames: np.ndarray  # (n_files + 1,) offsets of each file's rows in ``frames``
    file_kept: np.ndarray  # (n_files + 1,) offsets of each file's rows in ``kept``

    # Shortcuts to the all-frames table.
    @property
    def train_id(self) -> np.ndarray:
        return self.frames.train_id

    @property
    def pulse_id(self) -> np.ndarray:
        return self.frames.pulse_id

    @property
    def timestamp(self) -> np.ndarray:
        return self.frames.timestamp

    @property
    def label(self) -> np.ndarray:
        return self.frames.label

    @property
    def probabilities(self) -> np.ndarray:
        return self.frames.probabilities

    def model_versions(self, table: FrameTable) -> np.ndarray:
        """The model version string of each row of ``table``."""
        return np.asarray(self.models, dtype=object)[table.model]

    def class_counts(self) -> dict[str, int]:
        """Number of frames seen per class."""
        counts = np.bincount(self.frames.label, minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts, strict=False)}


@dataclass
class _FileTables:
    classes: tuple[str, ...]
    models: list[str]
    frame_shape: tuple[int, int]
    n_kept: int
    frames: dict[str, np.ndarray]
    kept: dict[str, np.ndarray]


def _consistent_counts(h5: h5py.File) -> tuple[int, int]:
    """Rows of the all-frames table and of the kept data that are complete and consistent."""
    kept_group, frames_group = h5[KEPT_GROUP], h5[FRAMES_GROUP]
    n_kept = min([h5[DATA_PATH].shape[0], *(kept_group[c].shape[0] for c in COLUMNS)])
    n_frames = min(frames_group[c].shape[0] for c in COLUMNS | FRAME_ONLY_COLUMNS)
    return n_frames, n_kept


def _read_file(path: Path) -> _FileTables:
    try:
        with open_cxi(path) as h5:
            classes = tuple(str(c) for c in h5[KEPT_GROUP].attrs["classes"])
            models = [m.decode() for m in h5[MODELS_PATH][()]]
            frame_shape = tuple(int(s) for s in h5[DATA_PATH].shape[1:])
            n_frames, n_kept = _consistent_counts(h5)
            frames = {c: h5[FRAMES_GROUP][c][:n_frames] for c in COLUMNS | FRAME_ONLY_COLUMNS}
            kept = {c: h5[KEPT_GROUP][c][:n_kept] for c in COLUMNS}
    except (KeyError, OSError) as exc:
        raise InputDataError(f"{path}: not a hitstream CXI file ({exc})") from exc
    # A .part file may show a row whose kept frame or model is not flushed yet: cut there.
    bad = np.flatnonzero((frames["kept_index"] >= n_kept) | (frames["model"] >= len(models)))
    if len(bad):
        frames = {c: a[: bad[0]] for c, a in frames.items()}
    bad = np.flatnonzero(kept["model"] >= len(models))
    if len(bad):
        n_kept = int(bad[0])
        kept = {c: a[:n_kept] for c, a in kept.items()}
    return _FileTables(classes, models, (frame_shape[0], frame_shape[1]), n_kept, frames, kept)


def _empty_table(c: int) -> dict[str, np.ndarray]:
    dtypes = COLUMNS | FRAME_ONLY_COLUMNS
    return {k: np.zeros((0, c) if k == "probabilities" else (0,), dt) for k, dt in dtypes.items()}


def read_run(
    out_dir: Path, run: str, *, worker: str | None = None, include_part: bool = False
) -> RunTables:
    """Concatenate the tables of a run's files (see :func:`list_run_files` for the order).

    Model indices are remapped to one list for the run (first appearance order) and
    ``kept_index`` to rows of the run's kept table. Raises :class:`InputDataError` when
    there is no file or the files disagree on classes or frame shape. A ``.part`` file
    that cannot be read (just created, or its writer was killed before the first flush) is
    skipped with a warning.
    """
    loaded: list[tuple[Path, _FileTables]] = []
    for path in list_run_files(out_dir, run, worker=worker, include_part=include_part):
        try:
            loaded.append((path, _read_file(path)))
        except InputDataError as exc:
            if not _is_part(path):
                raise
            log.warning("skipping %s: %s", path.name, exc)
    if not loaded:
        raise InputDataError(f"{out_dir}: no files of run {run!r}" + _worker_note(worker))
    files = [p for p, _ in loaded]
    models: dict[str, int] = {}
    frames_parts: list[dict[str, np.ndarray]] = []
    kept_parts: list[dict[str, np.ndarray]] = []
    file_frames, file_kept = [0], [0]
    first: _FileTables | None = None
    for i, (path, t) in enumerate(loaded):
        if first is None:
            first = t
        elif (t.classes, t.frame_shape) != (first.classes, first.frame_shape):
            raise InputDataError(
                f"{path}: classes {t.classes} / frame shape {t.frame_shape} differ from "
                f"{files[0].name}: {first.classes} / {first.frame_shape}"
            )
        remap = np.array([models.setdefault(m, len(models)) for m in t.models], dtype=np.int16)
        for table, parts in ((t.frames, frames_parts), (t.kept, kept_parts)):
            table = dict(table)
            table["model"] = remap[table["model"]] if len(remap) else table["model"]
            table["file"] = np.full(len(table["train_id"]), i, dtype=np.int32)
            parts.append(table)
        ki = frames_parts[-1]["kept_index"]
        frames_parts[-1]["kept_index"] = np.where(ki >= 0, ki + file_kept[-1], -1)
        n = len(kept_parts[-1]["train_id"])
        kept_parts[-1]["kept"] = np.ones(n, dtype=bool)
        kept_parts[-1]["kept_index"] = np.arange(file_kept[-1], file_kept[-1] + n)
        file_frames.append(file_frames[-1] + len(frames_parts[-1]["train_id"]))
        file_kept.append(file_kept[-1] + n)
    assert first is not None
    empty = _empty_table(len(first.classes)) | {"file": np.zeros(0, np.int32)}

    def concat(parts: list[dict[str, np.ndarray]]) -> FrameTable:
        return FrameTable(
            **{k: np.concatenate([v] + [p[k] for p in parts]) for k, v in empty.items()}
        )

    return RunTables(
        files=files,
        classes=first.classes,
        models=tuple(models),
        frame_shape=first.frame_shape,
        frames=concat(frames_parts),
        kept=concat(kept_parts),
        file_frames=np.asarray(file_frames, dtype=np.int64),
        file_kept=np.asarray(file_kept, dtype=np.int64),
    )


def _worker_note(worker: str | None) -> str:
    return f" (worker {worker!r})" if worker is not None else ""


def _is_part(path: Path) -> bool:
    return path.name.endswith(PART_SUFFIX)


def _kept_files(
    out_dir: Path, run: str, worker: str | None, include_part: bool
) -> list[tuple[Path, int]]:
    """Readable files of the run with their number of consistent kept frames."""
    out = []
    for path in list_run_files(out_dir, run, worker=worker, include_part=include_part):
        try:
            with open_cxi(path) as h5:
                out.append((path, _consistent_counts(h5)[1]))
        except (InputDataError, KeyError, OSError) as exc:
            if not _is_part(path):
                raise InputDataError(f"{path}: not a hitstream CXI file ({exc})") from exc
            log.warning("skipping %s: %s", path.name, exc)
    return out


def iter_kept_frames(
    out_dir: Path,
    run: str,
    *,
    worker: str | None = None,
    include_part: bool = False,
    block: int = 256,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, frames)``: blocks of at most ``block`` kept frames, in run order.

    ``start`` is the row of the block's first frame in :attr:`RunTables.kept`.
    """
    start = 0
    for path, n in _kept_files(out_dir, run, worker, include_part):
        with open_cxi(path) as h5:
            data = h5[DATA_PATH]
            for i in range(0, n, block):
                frames = data[i : min(i + block, n)]
                yield start, frames
                start += len(frames)


def read_kept_frames(
    out_dir: Path,
    run: str,
    index: Sequence[int] | np.ndarray,
    *,
    worker: str | None = None,
    include_part: bool = False,
) -> np.ndarray:
    """Kept frames by row of :attr:`RunTables.kept` (any order, repeats allowed): (K, H, W)."""
    kept_files = _kept_files(out_dir, run, worker, include_part)
    files = [p for p, _ in kept_files]
    offsets = np.concatenate([[0], np.cumsum([n for _, n in kept_files])]).astype(np.int64)
    index = np.asarray(index, dtype=np.int64).reshape(-1)
    if len(index) and (index.min() < 0 or index.max() >= offsets[-1]):
        raise InputDataError(
            f"{out_dir}: kept frame index out of range 0..{offsets[-1] - 1} for run {run!r}"
        )
    out: np.ndarray | None = None
    which = np.searchsorted(offsets, index, side="right") - 1
    for fi in np.unique(which):
        rows = index[which == fi] - offsets[fi]
        uniq, inverse = np.unique(rows, return_inverse=True)
        with open_cxi(files[fi]) as h5:
            data = h5[DATA_PATH]
            if out is None:
                out = np.empty((len(index), *data.shape[1:]), dtype=data.dtype)
            out[which == fi] = data[uniq][inverse]
    if out is None:
        shape: tuple[int, ...] = (0, 0, 0)
        if files:
            with open_cxi(files[0]) as h5:
                shape = (0, *h5[DATA_PATH].shape[1:])
        out = np.empty(shape, dtype=np.float32)
    return out

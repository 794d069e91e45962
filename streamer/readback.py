"""Read a run's rolling files back: the decision tables as numpy arrays, kept frames in blocks.

Files are taken in the order of :func:`list_run_files` (worker, then sequence number), the
same order as the run index. ``.part`` files (still being written, or left by a killed
writer) are read in SWMR mode and cut to the rows that are consistent across their datasets
(:func:`consistent_rows`, which :mod:`streamer.recovery` uses to finish orphans). Without
``include_part``, orphan ``.part`` files (no running streamer holds their worker) are left
out with an :class:`OrphanFilesWarning`.

The run background each frame was classified with: ``background_level``,
``background_warm`` and ``background`` (an index into :attr:`RunTables.background_versions`,
the snapshots of all files in file order; -1: none) in both tables, the maps read with
:meth:`RunTables.background_maps`. Files written before the background have none: their rows
read NaN, False and -1.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401 - registers the LZ4/bitshuffle/zstd filters the writer uses
import numpy as np

from hitstream.errors import InputDataError
from streamer.cxi_layout import (
    BACKGROUND_COLUMNS,
    BACKGROUND_MAPS,
    BACKGROUND_VERSION,
    COLUMNS,
    DATA_PATH,
    FRAME_ONLY_COLUMNS,
    FRAMES_GROUP,
    KEPT_GROUP,
    MODELS_PATH,
    PART_SUFFIX,
    file_pattern,
)
from streamer.worker_lock import is_locked

log = logging.getLogger(__name__)


class OrphanFilesWarning(UserWarning):
    """A run has ``.part`` files that no running streamer writes (a writer was killed):
    :func:`read_run` leaves them out; ``streamer index OUT RUN`` recovers them."""


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
    except (OSError, RuntimeError) as exc:  # RuntimeError: e.g. a bad superblock
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
    background_level: np.ndarray  # float32, photons per valid pixel (NaN: none)
    background_warm: np.ndarray  # bool
    background: np.ndarray  # int32, index into RunTables.background_versions (-1: none)
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
    # run-background snapshots of all files, file by file (a snapshot used in two files is
    # there twice): their versions, and the offsets of each file's maps
    background_versions: np.ndarray  # (K,) int64
    file_backgrounds: np.ndarray  # (n_files + 1,) int64

    def background_maps(self, index: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """(len(index), H, W) float32 maps by index of ``background_versions`` (all: None),
        e.g. ``tables.background_maps(tables.frames.background[rows])`` (no -1 there)."""
        k = len(self.background_versions)
        idx = np.arange(k) if index is None else np.asarray(index, np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= k):
            raise InputDataError(f"background map index out of range 0..{k - 1}")
        out = np.empty((len(idx), *self.frame_shape), np.float32)
        which = np.searchsorted(self.file_backgrounds, idx, side="right") - 1
        for fi in np.unique(which):
            rows = idx[which == fi] - self.file_backgrounds[fi]
            uniq, inverse = np.unique(rows, return_inverse=True)
            with open_cxi(self.files[fi]) as h5:
                out[which == fi] = h5[BACKGROUND_MAPS][uniq][inverse]
        return out

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
    background_versions: np.ndarray  # (K,) int64


def _present(group: h5py.Group, columns: dict[str, np.dtype]) -> list[str]:
    """The columns a table holds (older files lack the background columns)."""
    return [c for c in columns if c not in BACKGROUND_COLUMNS or c in group]


@dataclass(frozen=True)
class ConsistentRows:
    """Rows of a file that are complete and agree with each other: every frame row refers
    to a kept row, model and background map that are there, and every kept row is referred
    to by a frame row. A finished file's are all its rows; a ``.part`` file's may be fewer
    (its datasets are flushed one after the other, and its writer may have died between)."""

    frames: int  # rows of the all-frames table
    kept: int  # rows of the kept table and of the kept data
    models: int  # entries of /entry_1/models
    maps: int  # run-background maps and their versions


def _consistent_counts(h5: h5py.File) -> tuple[int, int]:
    """Rows of the all-frames table and of the kept data present in every column."""
    kept_group, frames_group = h5[KEPT_GROUP], h5[FRAMES_GROUP]
    n_kept = min(
        [h5[DATA_PATH].shape[0], *(kept_group[c].shape[0] for c in _present(kept_group, COLUMNS))]
    )
    n_frames = min(
        frames_group[c].shape[0] for c in _present(frames_group, COLUMNS | FRAME_ONLY_COLUMNS)
    )
    return n_frames, n_kept


def _n_maps(h5: h5py.File) -> int:
    if BACKGROUND_MAPS not in h5:
        return 0
    return int(min(h5[BACKGROUND_MAPS].shape[0], h5[BACKGROUND_VERSION].shape[0]))


def _first_bad(bad: np.ndarray, n: int) -> int:
    where = np.flatnonzero(bad)
    return int(where[0]) if len(where) else n


def _cut(
    frames: dict[str, np.ndarray], kept: dict[str, np.ndarray], n_kept: int, models: int, maps: int
) -> ConsistentRows:
    """Cut the rows read (``frames``: at least kept_index and model; ``kept``: model;
    background where the file has it) where they refer to something not there yet."""

    def refs_missing(t: dict[str, np.ndarray]) -> np.ndarray:
        bad = t["model"] >= models
        return bad | (t["background"] >= maps) if "background" in t else bad

    n_kept = min(n_kept, _first_bad(refs_missing(kept), len(kept["model"])))
    ki = frames["kept_index"]
    n_frames = _first_bad((ki >= n_kept) | refs_missing(frames), len(ki))
    return ConsistentRows(n_frames, int((ki[:n_frames] >= 0).sum()), models, maps)


def consistent_rows(h5: h5py.File) -> ConsistentRows:
    """The consistent rows of an open file (see :class:`ConsistentRows`).

    Raises KeyError when the file lacks the layout.
    """
    n_frames, n_kept = _consistent_counts(h5)
    fg, kg = h5[FRAMES_GROUP], h5[KEPT_GROUP]
    frames = {c: fg[c][:n_frames] for c in ("kept_index", "model", "background") if c in fg}
    kept = {c: kg[c][:n_kept] for c in ("model", "background") if c in kg}
    return _cut(frames, kept, n_kept, int(h5[MODELS_PATH].shape[0]), _n_maps(h5))


def _read_table(group: h5py.Group, columns: dict[str, np.dtype], n: int) -> dict[str, np.ndarray]:
    """``n`` rows of every column; a background column the file lacks is filled."""
    out = {}
    for c, dtype in columns.items():
        if c in group:
            out[c] = group[c][:n]
        else:  # written before the run background: none recorded
            fill = {"background_level": np.nan, "background_warm": False, "background": -1}[c]
            out[c] = np.full(n, fill, dtype)
    return out


def _read_file(path: Path) -> _FileTables:
    try:
        with open_cxi(path) as h5:
            classes = tuple(str(c) for c in h5[KEPT_GROUP].attrs["classes"])
            models = [m.decode() for m in h5[MODELS_PATH][()]]
            frame_shape = tuple(int(s) for s in h5[DATA_PATH].shape[1:])
            n_frames, n_kept = _consistent_counts(h5)
            frames = _read_table(h5[FRAMES_GROUP], COLUMNS | FRAME_ONLY_COLUMNS, n_frames)
            kept = _read_table(h5[KEPT_GROUP], COLUMNS, n_kept)
            n_maps = _n_maps(h5)
            versions = np.zeros(0, np.int64)
            if n_maps:
                versions = h5[BACKGROUND_VERSION][:n_maps].astype(np.int64)
    except (KeyError, OSError, RuntimeError) as exc:
        raise InputDataError(f"{path}: not a hitstream CXI file ({exc})") from exc
    # A .part file may show a row whose kept frame, model or map is not flushed yet: cut there.
    rows = _cut(frames, kept, n_kept, len(models), n_maps)
    frames = {c: a[: rows.frames] for c, a in frames.items()}
    kept = {c: a[: rows.kept] for c, a in kept.items()}
    shape = (frame_shape[0], frame_shape[1])
    return _FileTables(classes, models, shape, rows.kept, frames, kept, versions)


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
    skipped with a warning. Without ``include_part``, ``.part`` files that no running
    streamer holds (see :mod:`streamer.worker_lock`) are orphans of a killed writer: they
    are named in an :class:`OrphanFilesWarning`.
    """
    listed = list_run_files(out_dir, run, worker=worker, include_part=True)
    if not include_part:
        _warn_orphans(out_dir, run, [p for p in listed if _is_part(p)])
        listed = [p for p in listed if not _is_part(p)]
    loaded: list[tuple[Path, _FileTables]] = []
    for path in listed:
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
    file_frames, file_kept, file_backgrounds = [0], [0], [0]
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
            bg = table["background"]
            table["background"] = np.where(bg >= 0, bg + file_backgrounds[-1], -1).astype(np.int32)
            table["file"] = np.full(len(table["train_id"]), i, dtype=np.int32)
            parts.append(table)
        ki = frames_parts[-1]["kept_index"]
        frames_parts[-1]["kept_index"] = np.where(ki >= 0, ki + file_kept[-1], -1)
        n = len(kept_parts[-1]["train_id"])
        kept_parts[-1]["kept"] = np.ones(n, dtype=bool)
        kept_parts[-1]["kept_index"] = np.arange(file_kept[-1], file_kept[-1] + n)
        file_frames.append(file_frames[-1] + len(frames_parts[-1]["train_id"]))
        file_kept.append(file_kept[-1] + n)
        file_backgrounds.append(file_backgrounds[-1] + len(t.background_versions))
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
        background_versions=np.concatenate(
            [np.zeros(0, np.int64)] + [t.background_versions for _, t in loaded]
        ),
        file_backgrounds=np.asarray(file_backgrounds, dtype=np.int64),
    )


def _warn_orphans(out_dir: Path, run: str, parts: list[Path]) -> None:
    """Warn about the ``parts`` whose worker no running streamer holds."""
    pattern = file_pattern(run)
    live: dict[str, bool] = {}
    orphans = []
    for p in parts:
        m = pattern.fullmatch(p.name)
        assert m is not None  # listed by list_run_files
        w = m["worker"]
        if w not in live:
            live[w] = is_locked(out_dir, run, w)
        if not live[w]:
            orphans.append(p.name)
    if orphans:
        warnings.warn(
            f"{out_dir}: {len(orphans)} unfinished file(s) of run {run!r} that no running "
            f"streamer writes were left out: {', '.join(orphans)}; run `streamer index "
            f"{out_dir} {run}` to recover them (or read them as they are with include_part=True)",
            OrphanFilesWarning,
            stacklevel=3,
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
                out.append((path, consistent_rows(h5).kept))
        except (InputDataError, KeyError, OSError, RuntimeError) as exc:
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

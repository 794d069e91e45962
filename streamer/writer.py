"""Rolling, CXI-compatible HDF5 output: kept frames plus the decision of every frame seen.

Files are named ``<run>_<worker>_<seq:04d>.cxi``. Each is written as ``<name>.part`` in SWMR
mode (readers may open it with ``h5py.File(p, "r", libver="latest", swmr=True)``) and renamed
with :func:`os.replace` only once it is complete, so a finished name is always a complete
file. A new file starts when the current one holds ``max_frames`` kept frames (exactly: a
batch is split between files when needed), reaches ``max_bytes`` (checked after each batch)
or is ``max_seconds`` old (checked at each write and flush), whichever comes first. Files
are opened lazily on the first frame, so no file is ever without frames.

Kept pixels are written at each batch (one resize and one slice assignment); the table rows
are buffered and appended in one go per column at each flush (at least every
``flush_every_s``), every 4096 rows and when a file is finished. SWMR readers see what was
flushed; a killed writer leaves what it last flushed. An I/O error (disk full) abandons the
open file without closing it (HDF5 cannot close a file whose write failed, and may crash trying,
h5py issue #914): its ``.part`` keeps what was last flushed, the error is raised as
:class:`OutputError` (:class:`DiskFullError` when the disk is full) and finished files are
untouched.

The layout and file names are :mod:`streamer.cxi_layout`.

The writer is not thread-safe: one thread owns it.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

import hitstream
from hitstream.background import BackgroundSnapshot
from hitstream.compression import compression_options
from hitstream.errors import ConfigError, DiskFullError, OutputError
from hitstream.geometry import DetectorGeometry
from streamer.cxi_layout import (
    BACKGROUND_GROUP,
    COLUMNS,
    CXI_VERSION,
    DATA_LINK,
    DATA_PATH,
    DETECTOR_GROUP,
    FRAME_ONLY_COLUMNS,
    FRAMES_GROUP,
    KEPT_GROUP,
    MODEL_DTYPE,
    MODEL_STR_BYTES,
    PART_SUFFIX,
    SOURCE_GROUP,
    TABLE_CHUNK,
    TIME_DTYPE,
    check_name,
    file_name,
    next_sequence,
)
from streamer.types import ResultBatch

_PLANCK_C = 6.62607015e-34 * 299_792_458.0  # h * c in J m
_IO_ERRORS = (OSError, RuntimeError)  # what h5py raises when a read or write fails


@dataclass(frozen=True)
class WriterConfig:
    """Where and how the rolling writer writes: the ``[output]`` section of the config.

    ``max_frames`` counts kept frames per file; ``max_bytes`` is the file size (checked after
    each batch, so a file may exceed it by up to one batch); ``max_seconds`` is the age of a
    file. ``flush_every_s`` = 0 flushes after every batch; a flush also happens once
    ``flush_every_frames`` rows wait. What a SIGKILL loses is bounded by both (plus the frames
    in the pipeline's queues). ``min_free_bytes`` > 0 makes the
    writer raise :class:`DiskFullError` (after finishing the open file) when the output
    directory's free space falls below it; checked before every batch and at every flush.
    ``keep_classes``: the classes whose frames go to the kept data (None: the bundle's).
    """

    dir: Path = Path("out")
    run: str = "run"
    worker: str = "w0"
    max_frames: int = 10_000
    max_bytes: int = 2 << 30
    max_seconds: float = 300.0
    compression: str = "lz4"  # as small as bitshuffle-LZ4 on photon counts, 2× faster
    swmr: bool = True
    flush_every_s: float = 1.0
    flush_every_frames: int = TABLE_CHUNK
    min_free_bytes: int = 1 << 30
    keep_classes: list[str] | None = None
    # while the output disk is full: labels of every frame go to ``labels_dir`` (another
    # filesystem) when set, else to a table in memory of at most ``backlog_frames`` rows that
    # is written to the output when space returns; free space is retried every ``retry_s``
    labels_dir: Path | None = None
    backlog_frames: int = 1_000_000
    retry_s: float = 2.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "dir", Path(self.dir))
        check_name("run", self.run)
        check_name("worker", self.worker)
        compression_options(self.compression)
        if self.max_frames < 1:
            raise ConfigError(f"output.max_frames={self.max_frames}: must be >= 1")
        if self.max_bytes < 1:
            raise ConfigError(f"output.max_bytes={self.max_bytes}: must be >= 1")
        if self.max_seconds < 0 or self.flush_every_s < 0:
            raise ConfigError("output.max_seconds and output.flush_every_s must be >= 0")
        if self.flush_every_frames < 1:
            raise ConfigError(f"output.flush_every_frames={self.flush_every_frames}: must be >= 1")
        if self.min_free_bytes < 0:
            raise ConfigError(f"output.min_free_bytes={self.min_free_bytes}: must be >= 0")
        if self.backlog_frames < 0 or self.retry_s <= 0:
            raise ConfigError("output.backlog_frames must be >= 0 and output.retry_s > 0")
        if self.labels_dir is not None:
            object.__setattr__(self, "labels_dir", Path(self.labels_dir))


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _attr_value(value: Any) -> Any:
    """Dicts (and lists of dicts) become JSON text; other values go to h5py as they are."""
    if isinstance(value, Mapping) or (
        isinstance(value, list | tuple) and any(isinstance(v, Mapping) for v in value)
    ):
        return json.dumps(value, sort_keys=True)
    return value


def _is_disk_full(exc: BaseException) -> bool:
    """True for ENOSPC/EDQUOT, raised by the OS or reported inside an HDF5 error message."""
    text = str(exc)
    return getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or any(
        s in text for s in (f"errno = {errno.ENOSPC},", f"errno = {errno.EDQUOT},", "No space left")
    )


def _io_error(where: str, exc: BaseException, note: str) -> OutputError:
    """:class:`DiskFullError` (disk full) or :class:`OutputError` for an I/O error at ``where``."""
    if _is_disk_full(exc):
        return DiskFullError(f"{where}: disk full (no space left on device){note}")
    text = " ".join(str(exc).split())
    return OutputError(f"{where}: write failed ({type(exc).__name__}: {text}){note}")


def _never_close(h5: h5py.File, *objects: Any) -> None:
    """Keep ``h5`` and everything open in it open until the process ends.

    Each open HDF5 object gets one extra reference that is never released (a locked h5py
    identifier is not decremented when freed), so HDF5 never flushes or closes them: neither
    when their Python objects are freed nor at exit.
    """
    ids: list[Any] = []
    try:
        ids = list(h5py.h5f.get_obj_ids(h5.id, h5py.h5f.OBJ_ALL))  # each holds a new reference
    except Exception:  # e.g. a close that failed half-way: lock the references we hold
        ids = [o.id for o in (h5, *objects)]
    for oid in ids:
        oid.locked = True


@dataclass
class _OpenFile:
    """State of the ``.part`` file being written."""

    h5: h5py.File
    part: Path
    final: Path
    opened: float
    data: h5py.Dataset
    kept: dict[str, h5py.Dataset]
    frames: dict[str, h5py.Dataset]
    models_ds: h5py.Dataset
    bg_maps: h5py.Dataset
    bg_version: h5py.Dataset
    end_time: h5py.Dataset
    models: dict[str, int] = field(default_factory=dict)
    backgrounds: dict[int, int] = field(default_factory=dict)  # version -> row of bg_maps
    n_kept: int = 0  # kept frames written to ``data``
    n_frames: int = 0  # frames seen (rows of the all-frames table, pending included)
    flushed_frames: int = 0  # of n_frames, rows flushed to disk (what a kill leaves)
    flushed_kept: int = 0  # of n_kept, kept frames flushed to disk
    last_flush: float = 0.0
    pending_kept: list[dict[str, np.ndarray]] = field(default_factory=list)
    pending_frames: list[dict[str, np.ndarray]] = field(default_factory=list)
    pending_rows: int = 0

    def write_pending(self) -> None:
        """Append the buffered table rows: the kept table first, then the all-frames table."""
        for pending, datasets in (
            (self.pending_kept, self.kept),
            (self.pending_frames, self.frames),
        ):
            if not pending:
                continue
            n0 = next(iter(datasets.values())).shape[0]
            for name, ds in datasets.items():
                arr = (
                    pending[0][name]
                    if len(pending) == 1
                    else np.concatenate([p[name] for p in pending])
                )
                ds.resize(n0 + len(arr), axis=0)
                ds[n0 : n0 + len(arr)] = arr
            pending.clear()
        self.pending_rows = 0

    def datasets(self) -> list[h5py.Dataset]:
        """In flush order: model list, background maps, kept data, kept table, all-frames
        table. Whatever a flushed row refers to (a model, a map, a kept row) is flushed before
        it.
        """
        return [
            self.models_ds,
            self.bg_version,
            self.bg_maps,
            self.data,
            *self.kept.values(),
            *self.frames.values(),
        ]


class RollingWriter:
    """Writes :class:`ResultBatch` es to rolling CXI files; a context manager.

    Example::

        cfg = WriterConfig(Path("out"), run="r0042", worker="w0", max_frames=5000)
        with RollingWriter(cfg, classes=("empty", "single"), frame_shape=(260, 257)) as w:
            for result in results:
                w.write(result)
        print(w.files_closed)
    """

    def __init__(
        self,
        config: WriterConfig,
        *,
        classes: tuple[str, ...],
        frame_shape: tuple[int, int],
        geometry: DetectorGeometry | None = None,
        attrs: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.classes = tuple(str(c) for c in classes)
        if not self.classes:
            raise ConfigError("writer classes: need at least one class")
        self.frame_shape = (int(frame_shape[0]), int(frame_shape[1]))
        self.geometry = geometry
        self.attrs = dict(attrs or {})
        self._compression = compression_options(config.compression)
        config.dir.mkdir(parents=True, exist_ok=True)
        self._seq = next_sequence(config.dir, config.run, config.worker)
        self._file: _OpenFile | None = None
        self._closed = False
        self._bytes_closed = 0
        self.files_closed: list[Path] = []
        self.frames_seen = 0
        self.frames_kept = 0
        self.rows_flushed = 0  # all-frames rows flushed to disk, all files
        self.kept_flushed = 0  # kept frames flushed to disk, all files
        self.rows_lost = 0  # rows of abandoned files never flushed (lost with the file)
        self.kept_lost = 0  # kept frames among them

    # -- public API -----------------------------------------------------------------------

    @property
    def next_sequence(self) -> int:
        """The sequence number the next file will get (or a higher one, if it is taken)."""
        return self._seq

    @property
    def current_path(self) -> Path | None:
        """The ``.part`` file being written, or None between files."""
        return self._file.part if self._file is not None else None

    @property
    def bytes_written(self) -> int:
        """Size of the finished files plus the current size of the open one."""
        open_size = self._file.h5.id.get_filesize() if self._file is not None else 0
        return self._bytes_closed + open_size

    @property
    def closed(self) -> bool:
        return self._closed

    def write(self, result: ResultBatch) -> None:
        """Append one batch: every frame to the all-frames table, kept ones to the data."""
        if self._closed:
            raise OutputError(f"writer for {self.config.dir}/{self.config.run}: closed")
        n = self._validate(result)
        if n == 0:
            return
        try:
            self._write(result, n)
        except _IO_ERRORS as exc:
            raise self._fail(exc) from exc

    def _write(self, result: ResultBatch, n: int) -> None:
        self._guard_disk()  # one statvfs per batch: stop before the disk is full, not in it
        keep = np.asarray(result.keep, dtype=bool)
        kept_pos = np.flatnonzero(keep)
        start = 0
        kept_before = 0  # kept frames of this batch before ``start``
        while start < n:
            if self._file is None:
                self._open(result.model_version)
            f = self._file
            assert f is not None
            room = self.config.max_frames - f.n_kept
            # Cut before the kept frame that would overfill the file.
            over = len(kept_pos) - kept_before > room
            end = int(kept_pos[kept_before + room]) if over else n
            n_kept = self._append(f, result, keep, start, end)
            kept_before += n_kept
            start = end
            if f.n_kept >= self.config.max_frames or (
                f.h5.id.get_filesize() >= self.config.max_bytes
            ):
                self.rotate()
        if self._file is not None:
            now = time.monotonic()
            if now - self._file.opened >= self.config.max_seconds:
                self.rotate()
            elif self._flush_due(now):
                self._flush_datasets(now)

    def flush(self) -> None:
        """Make everything written so far visible to SWMR readers and durable.

        Also applies the time limit (finishes a file older than ``max_seconds``) and the
        free-disk check, so call it periodically when frames may stop arriving.
        """
        if self._file is None:
            return
        try:
            self._guard_disk()
            if time.monotonic() - self._file.opened >= self.config.max_seconds:
                self.rotate()
            else:
                self._flush_datasets(time.monotonic())
        except _IO_ERRORS as exc:
            raise self._fail(exc) from exc

    def rotate(self) -> Path | None:
        """Finish the open file (if any) and return its final path; the next write starts one."""
        f = self._file
        if f is None:
            return None
        self._file = None
        try:
            f.end_time[()] = _utc_now().encode()
            self._flush_file(f)
        except _IO_ERRORS as exc:
            raise self._abandon(f, exc) from exc
        except BaseException:
            f.h5.close()
            raise
        try:
            f.h5.close()
        except _IO_ERRORS as exc:
            raise self._abandon(f, exc) from exc
        with open(f.part, "rb") as fh:
            os.fsync(fh.fileno())
        if f.final.exists():
            raise OutputError(f"{f.final}: exists already; left the new data in {f.part}")
        os.replace(f.part, f.final)
        self._bytes_closed += f.final.stat().st_size
        self.files_closed.append(f.final)
        return f.final

    def close(self) -> None:
        """Finish the open file; further writes raise :class:`OutputError`. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.rotate()

    def __enter__(self) -> RollingWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------

    def _abandon(self, f: _OpenFile, exc: BaseException) -> OutputError:
        """Give up the open file ``f`` after an I/O error; return the error to raise.

        The file is never closed (see :func:`_never_close`): its ``.part`` stays as last
        flushed. The next write starts a new file.
        """
        if self._file is f:
            self._file = None
        self.rows_lost += f.n_frames - f.flushed_frames
        self.kept_lost += f.n_kept - f.flushed_kept
        _never_close(f.h5, *f.datasets(), f.end_time)
        return _io_error(f"{f.part}", exc, "; file abandoned as last flushed")

    def _fail(self, exc: BaseException) -> OutputError:
        """An I/O error outside :meth:`rotate`: abandon the open file, if any."""
        if self._file is not None:
            return self._abandon(self._file, exc)
        return _io_error(f"writer {self.config.dir}/{self.config.run}", exc, "")

    def _validate(self, result: ResultBatch) -> int:
        where = f"writer {self.config.run}/{self.config.worker}"
        if tuple(result.classes) != self.classes:
            raise OutputError(
                f"{where}: batch classes {tuple(result.classes)} differ from the writer's "
                f"{self.classes}; start a new writer for a model with other classes"
            )
        frames = result.batch.frames
        n = len(result.batch)
        if frames.ndim != 3 or tuple(frames.shape[1:]) != self.frame_shape:
            raise OutputError(
                f"{where}: frames of shape {frames.shape}, expected (B, {self.frame_shape[0]}, "
                f"{self.frame_shape[1]})"
            )
        c = len(self.classes)
        expected = {
            "batch.train_id": (result.batch.train_id, (n,)),
            "batch.pulse_id": (result.batch.pulse_id, (n,)),
            "batch.timestamp": (result.batch.timestamp, (n,)),
            "probabilities": (result.probabilities, (n, c)),
            "label": (result.label, (n,)),
            "template_distance": (result.template_distance, (n,)),
            "keep": (result.keep, (n,)),
        }
        for name, (arr, shape) in expected.items():
            if np.shape(arr) != shape:
                raise OutputError(f"{where}: {name} has shape {np.shape(arr)}, expected {shape}")
        return n

    def _flush_due(self, now: float) -> bool:
        f = self._file
        assert f is not None
        return (
            now - f.last_flush >= self.config.flush_every_s
            or f.n_frames - f.flushed_frames >= self.config.flush_every_frames
        )

    def check_space(self) -> None:
        """Raise :class:`DiskFullError` when the output's free space is below
        ``min_free_bytes`` (finishing the open file first); nothing otherwise."""
        try:
            self._guard_disk()
        except _IO_ERRORS as exc:
            raise self._fail(exc) from exc

    def _guard_disk(self) -> None:
        limit = self.config.min_free_bytes
        if limit <= 0:
            return
        free = shutil.disk_usage(self.config.dir).free
        if free < limit:
            finished = self.rotate()
            raise DiskFullError(
                f"{self.config.dir}: {free} bytes free, below min_free_bytes={limit}"
                + (f"; finished {finished.name}" if finished else "")
            )

    def _open(self, model_version: str) -> None:
        self._guard_disk()
        cfg = self.config
        while True:
            final = cfg.dir / file_name(cfg.run, cfg.worker, self._seq)
            part = final.with_name(final.name + PART_SUFFIX)
            self._seq += 1
            if final.exists() or part.exists():
                continue
            try:
                h5 = h5py.File(part, "w-", libver="latest")
            except FileExistsError:
                continue
            break
        try:
            self._file = self._create_layout(h5, part, final, self._seq - 1, model_version)
        except _IO_ERRORS:
            _never_close(h5)  # closing would retry the failed write (see _abandon)
            part.unlink(missing_ok=True)
            raise
        except BaseException:
            h5.close()
            part.unlink(missing_ok=True)
            raise
        if cfg.swmr:
            h5.swmr_mode = True

    def _create_layout(
        self, h5: h5py.File, part: Path, final: Path, seq: int, model_version: str
    ) -> _OpenFile:
        cfg = self.config
        h, w = self.frame_shape
        c = len(self.classes)
        h5.create_dataset("cxi_version", data=np.int64(CXI_VERSION))
        entry = h5.create_group("entry_1")
        for key, value in self.attrs.items():
            try:
                entry.attrs[str(key)] = _attr_value(value)
            except (TypeError, ValueError) as exc:
                raise ConfigError(
                    f"writer attribute {key!r}: cannot store {value!r} ({exc})"
                ) from exc
        entry.attrs.update(
            {
                "NX_class": "NXentry",
                "run": cfg.run,
                "worker": cfg.worker,
                "sequence": seq,
                "classes": list(self.classes),
                "model": model_version,
                "hitstream_version": hitstream.__version__,
                "frame_shape": list(self.frame_shape),
                "compression": cfg.compression,
            }
        )
        entry.create_dataset("experiment_identifier", data=cfg.run)
        entry.create_dataset("start_time", data=_utc_now().encode(), dtype=TIME_DTYPE)
        end_time = entry.create_dataset("end_time", data=b"", dtype=TIME_DTYPE)
        models_ds = entry.create_dataset(
            "models", shape=(0,), maxshape=(None,), chunks=(16,), dtype=MODEL_DTYPE
        )
        bg = h5.create_group(BACKGROUND_GROUP)
        bg.attrs["description"] = (
            "the run's background (expected photons per pixel of an empty frame, estimated "
            "from the run's dim frames) of each snapshot that frames of this file were "
            "classified with; rows of the tables refer to it by their 'background' column"
        )
        bg_maps = bg.create_dataset(
            "maps",
            shape=(0, h, w),
            maxshape=(None, h, w),
            chunks=(1, h, w),
            dtype=np.float32,
            **self._compression,
        )
        bg_maps.attrs["units"] = "photons per pixel"
        bg_version = bg.create_dataset(
            "version", shape=(0,), maxshape=(None,), chunks=(16,), dtype=np.int64
        )
        det = h5.create_group(DETECTOR_GROUP)
        data = det.create_dataset(
            "data",
            shape=(0, h, w),
            maxshape=(None, h, w),
            chunks=(1, h, w),
            dtype=np.float32,
            **self._compression,
        )
        data.attrs["axes"] = "experiment_identifier:y:x"
        if self.geometry is not None:
            g = self.geometry
            for key, value in g.as_attrs().items():
                entry.attrs[f"geometry_{key}"] = value
            for name, value in (
                ("distance", g.distance_m),
                ("x_pixel_size", g.pixel_size_m),
                ("y_pixel_size", g.pixel_size_m),
            ):
                det.create_dataset(name, data=np.float64(value)).attrs["units"] = "m"
            det.attrs["hole_radius_px"] = g.hole_radius_px
            det.attrs["gap_rows"] = g.gap_rows
            src = h5.create_group(SOURCE_GROUP)
            energy = src.create_dataset("energy", data=np.float64(_PLANCK_C / g.wavelength_m))
            energy.attrs["units"] = "J"
            energy.attrs["wavelength"] = g.wavelength_m
            src.attrs["wavelength"] = g.wavelength_m
        h5.create_group("entry_1/data_1")[DATA_LINK.rsplit("/", 1)[1]] = h5py.SoftLink(DATA_PATH)

        def table(group_path: str, columns: dict[str, np.dtype], what: str) -> dict:
            group = h5.create_group(group_path)
            group.attrs["classes"] = list(self.classes)
            group.attrs["description"] = what
            out = {}
            for name, dtype in columns.items():
                shape: tuple[int, ...] = (0, c) if name == "probabilities" else (0,)
                out[name] = group.create_dataset(
                    name,
                    shape=shape,
                    maxshape=(None, *shape[1:]),
                    chunks=(TABLE_CHUNK, *shape[1:]),
                    dtype=dtype,
                    **self._compression,
                )
            return out

        kept = table(KEPT_GROUP, COLUMNS, "one row per kept frame, same order as data_1/data")
        frames = table(
            FRAMES_GROUP,
            COLUMNS | FRAME_ONLY_COLUMNS,
            "one row per frame seen (kept or not), in arrival order; kept_index is the row "
            "of the kept frame in data_1/data, -1 if not kept",
        )
        now = time.monotonic()
        return _OpenFile(
            h5=h5,
            part=part,
            final=final,
            opened=now,
            last_flush=now,
            data=data,
            kept=kept,
            frames=frames,
            models_ds=models_ds,
            bg_maps=bg_maps,
            bg_version=bg_version,
            end_time=end_time,
        )

    def _model_index(self, f: _OpenFile, version: str) -> int:
        idx = f.models.get(version)
        if idx is None:
            raw = version.encode()
            if len(raw) > MODEL_STR_BYTES:
                raise OutputError(
                    f"{f.part}: model version {version[:40]!r}... longer than "
                    f"{MODEL_STR_BYTES} bytes"
                )
            idx = len(f.models)
            f.models_ds.resize((idx + 1,))
            f.models_ds[idx] = raw
            f.models[version] = idx
        return idx

    def _background_index(self, f: _OpenFile, snap: BackgroundSnapshot | None) -> int:
        """Row of ``snap`` in the file's maps (appended on first use); -1 for None."""
        if snap is None:
            return -1
        idx = f.backgrounds.get(snap.version)
        if idx is None:
            h, w = self.frame_shape
            if np.shape(snap.map) != (h, w):
                raise OutputError(
                    f"{f.part}: background map of shape {np.shape(snap.map)}, expected {(h, w)}"
                )
            idx = len(f.backgrounds)
            f.bg_maps.resize(idx + 1, axis=0)
            f.bg_maps[idx] = np.asarray(snap.map, np.float32)
            f.bg_version.resize((idx + 1,))
            f.bg_version[idx] = snap.version
            f.backgrounds[snap.version] = idx
        return idx

    def _append(
        self, f: _OpenFile, result: ResultBatch, keep: np.ndarray, start: int, end: int
    ) -> int:
        """Write rows ``start:end`` of a batch; return how many of them were kept."""
        b = result.batch
        sl = slice(start, end)
        k = keep[sl]
        n = end - start
        kept_rows = np.flatnonzero(k)
        nk = len(kept_rows)
        model = np.full(n, self._model_index(f, result.model_version), dtype=np.int16)
        snap = result.background
        # Copies: the caller may reuse its arrays once write() returns.
        cols = {
            "train_id": b.train_id[sl],
            "pulse_id": b.pulse_id[sl],
            "timestamp": b.timestamp[sl],
            "label": result.label[sl],
            "probabilities": result.probabilities[sl],
            "template_distance": result.template_distance[sl],
            "model": model,
            "background_level": np.full(n, np.nan if snap is None else snap.level),
            "background_warm": np.full(n, snap is not None and snap.warm),
            "background": np.full(n, self._background_index(f, snap)),
        }
        cols = {name: np.array(a, dtype=COLUMNS[name]) for name, a in cols.items()}
        k0 = f.n_kept
        if nk:
            frames = b.frames[sl] if nk == n else b.frames[sl][kept_rows]
            f.data.resize(k0 + nk, axis=0)
            f.data[k0 : k0 + nk] = np.ascontiguousarray(frames, dtype=np.float32)
            f.pending_kept.append(cols if nk == n else {c: a[kept_rows] for c, a in cols.items()})
        kept_index = np.full(n, -1, dtype=np.int64)
        kept_index[kept_rows] = np.arange(k0, k0 + nk)
        f.pending_frames.append(cols | {"kept": k.copy(), "kept_index": kept_index})
        f.n_kept += nk
        f.n_frames += n
        self.frames_kept += nk
        self.frames_seen += n  # rows handed to the file: flushed later, or lost with it
        f.pending_rows += n
        if f.pending_rows >= TABLE_CHUNK:
            f.write_pending()
        return nk

    def _flush_datasets(self, now: float) -> None:
        assert self._file is not None
        self._flush_file(self._file)
        self._file.last_flush = now

    def _flush_file(self, f: _OpenFile) -> None:
        f.write_pending()
        if self.config.swmr:
            for ds in f.datasets():
                ds.flush()
        f.h5.flush()
        self.rows_flushed += f.n_frames - f.flushed_frames
        self.kept_flushed += f.n_kept - f.flushed_kept
        f.flushed_frames, f.flushed_kept = f.n_frames, f.n_kept
